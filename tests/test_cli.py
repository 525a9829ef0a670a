import pytest

from searchrl.cli import build_parser, main


def test_help_lists_every_command_with_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("quickstart", "data prepare", "data import", "data stats", "baseline relevance",
                "baseline retrieval"):
        line = next(l for l in out.splitlines() if l.strip().startswith(f"searchrl {cmd} "))
        assert len(line.split(None, len(cmd.split()) + 1)[-1]) > 10  # a real description


def test_prepare_esci_sample_and_refuse_unpinned_wands(mirror, tmp_path, capsys):
    out = tmp_path / "esci"
    assert main(["data", "prepare", "esci-sample", "--out", str(out), "--mirror", str(mirror),
                 "--fractions", "1,0,0"]) == 0
    assert "judgments 16" in capsys.readouterr().out
    assert main(["data", "prepare", "wands", "--out", str(tmp_path / "w"), "--mirror", str(mirror)]) == 2
    assert "--pin product.csv=" in capsys.readouterr().err


def test_bad_fractions_flag():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "prepare", "chorus", "--fractions", "0.5,x,0.5"])
