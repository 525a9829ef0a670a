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


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from searchrl.commands import data as data_commands
    from searchrl.errors import ConfigError
    assert main(["train", "sft", "--set", "optim.lrr=1"]) == 2  # a typo in a section key: a one-line error
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "optim: unknown key(s) ['lrr']" in err and "Traceback" not in err

    def bug(a):
        raise KeyError("file")  # a programming bug, not a user mistake
    monkeypatch.setattr(data_commands, "cmd_data_stats", bug)
    with pytest.raises(KeyError):  # not swallowed into "error: file"
        main(["data", "stats", "somewhere"])

    def config_problem(a):
        raise ConfigError("batch_size must be >= 1")
    monkeypatch.setattr(data_commands, "cmd_data_stats", config_problem)
    assert main(["data", "stats", "somewhere"]) == 2


def test_import_judgments_only_with_product_columns_mapped(tmp_path, capsys):
    """--map products.title=... without --products: the product fields come from the judgment rows."""
    from searchrl.data.schema import load_dataset
    src = tmp_path / "pairs.csv"
    src.write_text("query,sku,product_title,rel\nlaptop,a1,Dell XPS 13 laptop,4\nlaptop,a2,Laptop bag,2\n"
                   "mouse,a3,Wireless mouse,4\nmouse,a1,Dell XPS 13 laptop,1\n")
    assert main(["data", "import", "--judgments", str(src), "--map", "products.title=product_title",
                 "--map", "products.product_id=sku", "--map", "judgments.product_id=sku", "--map",
                 "judgments.label=rel", "--fractions", "1,0,0", "--out", str(tmp_path / "ds")]) == 0
    ds = load_dataset(tmp_path / "ds")
    assert sorted(ds.products["title"]) == ["Dell XPS 13 laptop", "Laptop bag", "Wireless mouse"]
    assert len(ds.judgments) == 4
    capsys.readouterr()
    assert main(["data", "import", "--judgments", str(src), "--map", "queries.text=query",
                 "--out", str(tmp_path / "x")]) == 2
    assert "no queries file" in capsys.readouterr().err
