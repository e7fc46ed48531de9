"""Prompt suites, bundled corpora and corruption ladders: contents, determinism, exact corruption counts,
and a one-line UserError for every kind of bad input."""

import base64
import copy
import re
from collections import Counter

import pytest

from sparsescope import probes
from sparsescope.errors import UserError
from sparsescope.probes import (CORRUPTIONS, DEFAULT_SUITES, PRINTABLE, Suite, ladder, ladder_spec, load_suites,
                                 load_text)

ID_FAMILIES = {"prose", "chat", "code"}
GENERATED = {"random_tokens", "shuffled_words", "base64_hex", "char_noise"}


def user_error(match):
    """pytest.raises for a UserError whose message matches and fits on one line."""
    class OneLine:
        def __enter__(self):
            self.ctx = pytest.raises(UserError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert "\n" not in str(self.info.value)
            return handled
    return OneLine()


def by_name(suites):
    return {s.name: s for s in suites}


def expected(level, n):
    return round(level * n / 100)


@pytest.fixture
def prose():
    return load_suites(["prose"])[0]


def distinct_words(tok, k):
    words = sorted(w for w in tok.get_vocab() if w.isalpha())
    assert len(words) >= k
    return " ".join(words[:k])


# ------------------------------------------------------------------------------------------ the bundle

def test_every_bundled_family_loads_with_20_prompts_source_and_licence(tiny_tokenizer):
    suites = load_suites(tokenizer=tiny_tokenizer)
    assert [s.name for s in suites] == list(DEFAULT_SUITES)
    assert len(ID_FAMILIES & set(DEFAULT_SUITES)) == 3 and len(set(DEFAULT_SUITES) - ID_FAMILIES) >= 5
    for s in suites:
        assert len(s.prompts) >= 20, s.name
        assert all(p.text.strip() for p in s.prompts), s.name
        assert s.source.strip() and s.license.strip(), s.name
        assert s.split == ("id" if s.name in ID_FAMILIES else "ood")
        assert s.family == s.name and s.level == 0
        assert len({p.id for p in s.prompts}) == len(s.prompts)
        assert all(p.suite == s.name and p.split == s.split and p.level == 0 for p in s.prompts)


def test_hand_written_prompts_are_short_passages():
    for s in load_suites(["prose", "chat", "code", "multilingual"]):
        for p in s.prompts:
            assert 20 <= len(p.text) <= 400, (s.name, p.id, len(p.text))
    for p in load_suites(["prose"])[0].prompts:
        assert 1 <= len(re.findall(r"[.!?](?=[\"”’]?(\s|$))", p.text)) <= 4, p.id


def test_multilingual_covers_many_scripts():
    text = "".join(load_suites(["multilingual"])[0].texts)
    blocks = {"Han": "\u4e00-\u9fff", "Kana": "\u3040-\u30ff", "Hangul": "\uac00-\ud7af", "Cyrillic": "\u0400-\u04ff",
              "Arabic": "\u0600-\u06ff", "Devanagari": "\u0900-\u097f", "Greek": "\u0370-\u03ff",
              "Hebrew": "\u0590-\u05ff", "Thai": "\u0e00-\u0e7f"}
    assert all(re.search(f"[{r}]", text) for r in blocks.values())


def test_chat_prompts_wear_the_chat_template_when_the_tokenizer_has_one(tiny_tokenizer):
    raw = load_suites(["chat"], tokenizer=tiny_tokenizer)[0]  # no template: text as written
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<bot>"
    wrapped = load_suites(["chat"], tokenizer=tok)[0]
    assert [p.id for p in raw.prompts] == [p.id for p in wrapped.prompts]
    assert all(w == f"<user>{r}</user><bot>" for r, w in zip(raw.texts, wrapped.texts))
    assert "chat template" in wrapped.source


def test_generated_families_are_deterministic_and_follow_the_seed(tiny_tokenizer):
    a, a2, b = (by_name(load_suites(sorted(GENERATED), tokenizer=tiny_tokenizer, seed=s)) for s in (0, 0, 1))
    for name in GENERATED:
        assert a[name].texts == a2[name].texts
    for name in GENERATED - {"base64_hex"}:  # base64/hex encodings involve no randomness
        assert a[name].texts != b[name].texts
    assert a["base64_hex"].texts == b["base64_hex"].texts


def test_random_tokens_are_length_non_special_vocabulary_ids(tiny_tokenizer):
    suite = load_suites(["random_tokens"], tokenizer=tiny_tokenizer)[0]
    special = set(tiny_tokenizer.all_special_ids)
    ids = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in suite.texts]
    assert all(len(x) == 48 and not special & set(x) for x in ids)
    used = Counter(i for x in ids for i in x)  # 30 × 48 draws cover the whole small vocabulary
    assert set(used) == set(range(len(tiny_tokenizer))) - special


def test_shuffled_words_permute_the_words_of_prose(prose):
    shuffled = load_suites(["shuffled_words"])[0]
    for clean, text in zip(prose.texts, shuffled.texts):
        assert Counter(text.split()) == Counter(clean.split())
        assert re.findall(r"\s+", text) == re.findall(r"\s+", clean)
        assert text != clean


def test_base64_hex_decode_to_a_word_prefix_of_prose(prose):
    encoded = load_suites(["base64_hex"])[0]
    for i, (clean, text) in enumerate(zip(prose.texts, encoded.texts)):
        raw = (bytes.fromhex(text) if i % 2 else base64.b64decode(text, validate=True)).decode("utf-8")
        assert clean.startswith(raw) and len(raw) <= 60 and len(raw) > 30
        assert raw == clean or clean[len(raw)] == " "


def test_char_noise_family_inserts_then_keeps_everything_printable(prose):
    noisy = load_suites(["char_noise"])[0]
    for clean, text in zip(prose.texts, noisy.texts):
        n = sum(not c.isspace() for c in clean)
        assert len(text) == len(clean) + round(0.03 * n)
        assert set(text) - set(clean) <= set(PRINTABLE)


def test_bundled_corpora_are_long_and_disjoint(prose):
    heldout, calibration = load_text("heldout"), load_text("calibration")
    assert len(heldout.split()) >= 3000 and len(calibration.split()) >= 2000

    def shingles(text, k=8):
        w = text.split()
        return {" ".join(w[i:i + k]) for i in range(len(w) - k + 1)}
    assert not shingles(heldout) & shingles(calibration)
    for t in prose.texts:
        assert not shingles(t) & (shingles(heldout) | shingles(calibration))


def test_user_files_load(tmp_path):
    (tmp_path / "mine.txt").write_text("first prompt\nsecond prompt\n", encoding="utf-8")
    (tmp_path / "mine.jsonl").write_text('{"id": "a", "text": "alpha"}\n\n{"text": "beta"}\n', encoding="utf-8")
    (tmp_path / "mine.yml").write_text("name: custom\nsplit: ood\nsource: me\nlicense: CC0-1.0\nprompts:\n  - one\n"
                                       "  - {id: x, text: two}\n", encoding="utf-8")
    txt, jsonl, yml = load_suites([tmp_path / "mine.txt", str(tmp_path / "mine.jsonl"), str(tmp_path / "mine.yml")])
    assert (txt.name, txt.split, txt.license) == ("mine", "id", "user-provided")
    assert txt.texts == ["first prompt", "second prompt"]
    assert [(p.id, p.text) for p in jsonl.prompts] == [("a", "alpha"), ("mine-001", "beta")]
    assert (yml.name, yml.split, yml.license) == ("custom", "ood", "CC0-1.0")
    assert [p.id for p in yml.prompts] == ["custom-000", "x"]


def test_user_spec_can_generate_from_a_user_file(tmp_path):
    (tmp_path / "clean.txt").write_text("one two three four five six seven eight\n", encoding="utf-8")
    (tmp_path / "noisy.yaml").write_text("generator: shuffled_words\nsource_suite: clean.txt\nn: 3\n", encoding="utf-8")
    suite = load_suites([str(tmp_path / "noisy.yaml")])[0]
    assert len(suite.prompts) == 3 and len(set(suite.texts)) == 3
    assert all(sorted(t.split()) == sorted("one two three four five six seven eight".split()) for t in suite.texts)


# -------------------------------------------------------------------------------------------- ladders

@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_ladder_level_zero_is_the_clean_text_and_levels_are_labelled(corruption, prose, tiny_tokenizer):
    suites = ladder(prose, corruption, tokenizer=tiny_tokenizer)
    assert [(s.name, s.split, s.level) for s in suites] == [
        (f"ladder:{corruption}", f"{corruption}@{level}", level) for level in (0, 10, 25, 50, 100)]
    assert suites[0].texts == prose.texts
    for s in suites:
        assert [p.id for p in s.prompts] == [f"{p.id}@{s.level}" for p in prose.prompts]
        assert all(p.level == s.level and p.split == s.split for p in s.prompts)
        assert s.license == prose.license
    assert all(a != b for a, b in zip(suites[-1].texts, prose.texts))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_ladder_is_reproducible_from_the_seed(corruption, prose, tiny_tokenizer):
    def run(seed):
        return [s.texts for s in ladder(prose, corruption, levels=(25, 50), seed=seed, tokenizer=tiny_tokenizer)]
    assert run(3) == run(3)
    assert run(3) != run(4)
    again = ladder(prose.texts[:5], corruption, levels=(25,), seed=3, tokenizer=tiny_tokenizer)[0]
    assert again.texts == ladder(prose, corruption, levels=(25,), seed=3, tokenizer=tiny_tokenizer)[0].texts[:5]


def test_replace_changes_exactly_k_tokens(tiny_tokenizer):
    enc = lambda t: tiny_tokenizer(t, add_special_tokens=False)["input_ids"]
    texts = ["the quick brown fox jumps over the lazy dog near a quiet river bank , while old sailors tell stories",
             "every morning she reads one book"]
    special = set(tiny_tokenizer.all_special_ids)
    for level in (0, 10, 25, 40, 50, 75, 100):
        for clean, text in zip(texts, ladder(texts, "replace", levels=(level,), tokenizer=tiny_tokenizer)[0].texts):
            a, b = enc(clean), enc(text)
            assert len(a) == len(b)
            assert sum(x != y for x, y in zip(a, b)) == expected(level, len(a))
            assert not special & set(b)


def test_shuffle_moves_exactly_k_tokens_keeping_the_multiset(tiny_tokenizer):
    enc = lambda t: tiny_tokenizer(t, add_special_tokens=False)["input_ids"]
    clean = distinct_words(tiny_tokenizer, 30)
    n = len(enc(clean))
    for level in (0, 3, 5, 10, 25, 50, 90, 100):
        ids = enc(ladder([clean], "shuffle", levels=(level,), seed=7, tokenizer=tiny_tokenizer)[0].texts[0])
        k = expected(level, n)
        assert Counter(ids) == Counter(enc(clean))
        assert sum(x != y for x, y in zip(ids, enc(clean))) == (2 if k == 1 else k)


def test_word_shuffle_keeps_words_and_whitespace(prose, tiny_tokenizer):
    clean = distinct_words(tiny_tokenizer, 40).replace(" ", "  ", 3)  # uneven whitespace must survive
    for level in (10, 25, 50, 100):
        text = ladder([clean], "shuffle", levels=(level,), seed=1)[0].texts[0]
        assert re.findall(r"\s+", text) == re.findall(r"\s+", clean)
        assert sum(x != y for x, y in zip(text.split(), clean.split())) == expected(level, 40)
    for level in (10, 50, 100):  # real prose repeats words: same multiset, never more than k changes
        total = 0
        for clean, text in zip(prose.texts, ladder(prose, "shuffle", levels=(level,))[0].texts):
            k = expected(level, len(clean.split()))
            changed = sum(x != y for x, y in zip(text.split(), clean.split()))
            assert Counter(text.split()) == Counter(clean.split()) and changed <= (2 if k == 1 else k)
            total += changed
        assert total >= 0.9 * sum(expected(level, len(t.split())) for t in prose.texts)


def test_char_noise_substitutes_exactly_k_non_space_characters(prose):
    for level in (10, 25, 50, 100):
        for clean, text in zip(prose.texts, ladder(prose, "char_noise", levels=(level,))[0].texts):
            assert len(text) == len(clean)
            assert [i for i, c in enumerate(text) if c.isspace()] == [i for i, c in enumerate(clean) if c.isspace()]
            diff = [(a, b) for a, b in zip(clean, text) if a != b]
            assert len(diff) == expected(level, sum(not c.isspace() for c in clean))
            assert all(b in PRINTABLE for _, b in diff)


def test_base64_encodes_exactly_k_words(prose):
    for level in (10, 25, 50, 100):
        for clean, text in zip(prose.texts, ladder(prose, "base64", levels=(level,))[0].texts):
            before, after = clean.split(), text.split()
            changed = [(a, b) for a, b in zip(before, after) if a != b]
            assert len(before) == len(after) and len(changed) == expected(level, len(before))
            assert all(base64.b64decode(b).decode("utf-8") == a for a, b in changed)


def test_rounding_is_half_to_even_on_the_exact_share():
    words = " ".join(f"w{i}" for i in range(10))  # 10 words: level 25 → 2.5 → 2, level 15 → 1.5 → 2, 35 → 4
    for level, k in ((25, 2), (15, 2), (35, 4), (5, 0)):
        text = ladder([words], "base64", levels=(level,))[0].texts[0]
        assert sum(a != b for a, b in zip(words.split(), text.split())) == k


def test_ladder_spec_records_what_reproduces_the_ladder(prose, tiny_tokenizer):
    spec = ladder_spec(prose, "replace", seed=5, tokenizer=tiny_tokenizer)
    assert spec["corruption"] == "replace" and spec["levels"] == [0, 10, 25, 50, 100] and spec["seed"] == 5
    assert (spec["unit"], spec["source_suite"], spec["n_texts"]) == ("token", "prose", len(prose.prompts))
    assert spec["texts_sha256"] == ladder_spec(prose.texts, "replace", seed=5, tokenizer=tiny_tokenizer)["texts_sha256"]
    assert spec["texts_sha256"] != ladder_spec(prose.texts[1:], "replace", tokenizer=tiny_tokenizer)["texts_sha256"]
    assert ladder_spec(prose, "shuffle")["unit"] == "word"
    assert ladder_spec(prose, "char_noise")["unit"] == "non-space character"
    source = load_suites([spec["source_suite"]])[0]
    rebuilt = ladder(source, spec["corruption"], spec["levels"], spec["seed"], tiny_tokenizer)
    assert [s.texts for s in rebuilt] == [s.texts for s in ladder(prose, "replace", seed=5, tokenizer=tiny_tokenizer)]


def test_ladder_names_expand_in_load_suites(prose):
    suites = load_suites(["prose", "ladder:char_noise"], seed=2)
    assert [s.split for s in suites] == ["id"] + [f"char_noise@{k}" for k in (0, 10, 25, 50, 100)]
    assert suites[1].texts == prose.texts
    assert suites[3].texts == ladder(prose, "char_noise", seed=2)[2].texts


# ----------------------------------------------------------------------------------------- bad input

def test_unknown_suite_lists_the_available_ones():
    with user_error(r"unknown suite 'prosee'.*prose, chat, code"):
        load_suites(["prosee"])


def test_missing_and_unsupported_files(tmp_path):
    with user_error("not found"):
        load_suites([str(tmp_path / "nope.yaml")])
    (tmp_path / "x.csv").write_text("a\n", encoding="utf-8")
    with user_error("unsupported suite file type '.csv'"):
        load_suites([str(tmp_path / "x.csv")])
    with user_error("not found"):
        load_text(str(tmp_path / "nope.txt"))


def test_empty_files_and_suites(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with user_error("empty.txt is empty"):
        load_suites([str(tmp_path / "empty.txt")])
    (tmp_path / "none.yaml").write_text("name: none\nprompts: []\n", encoding="utf-8")
    with user_error("has no prompts"):
        load_suites([str(tmp_path / "none.yaml")])


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café crème\n".encode("latin-1"))
    with user_error(r"latin1\.txt is not UTF-8.*UTF-8"):
        load_suites([str(path)])
    with user_error("is not UTF-8"):
        load_text(str(path))


def test_empty_prompts_are_dropped_with_a_warning(tmp_path):
    (tmp_path / "gaps.txt").write_text("first\n\n   \nsecond\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="dropped 2 empty prompt"):
        suite = load_suites([str(tmp_path / "gaps.txt")])[0]
    assert suite.texts == ["first", "second"]
    (tmp_path / "blank.yaml").write_text("prompts: ['', '  ', null]\n", encoding="utf-8")
    with user_error("all 3 prompts .* are empty"):
        load_suites([str(tmp_path / "blank.yaml")])


def test_bad_yaml_jsonl_and_specs(tmp_path):
    cases = {
        "broken.yaml": ("name: [unclosed\n", "not valid YAML"),
        "scalar.yaml": ("just a string\n", "expected a YAML mapping"),
        "gen.yaml": ("generator: zalgo\nn: 3\n", "unknown generator 'zalgo'; valid: random_tokens, shuffled_words"),
        "nosrc.yaml": ("generator: char_noise\nn: 3\n", "needs 'source_suite:'"),
        "zero.yaml": ("generator: shuffled_words\nsource_suite: prose\nn: 0\n", "'n' must be an integer >= 1"),
        "rate.yaml": ("generator: char_noise\nsource_suite: prose\nn: 2\nsubstitute: 1.5\n", r"fraction in \[0, 1\]"),
        "dup.yaml": ("prompts: [{id: a, text: x}, {id: a, text: y}]\n", "duplicate prompt ids"),
        "item.yaml": ("prompts: [[1, 2]]\n", "prompt 0 must be a string"),
        "bad.jsonl": ('{"text": "ok"}\n{oops\n', "line 2: not valid JSON"),
        "notext.jsonl": ('{"prompt": "x"}\n', "expected an object with a \"text\" field"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        with user_error(match):
            load_suites([str(tmp_path / name)])


def test_generated_family_without_tokenizer_says_so():
    with user_error("random_tokens.*pass tokenizer="):
        load_suites(["random_tokens"])
    with user_error("'replace'.*pass tokenizer="):
        load_suites(["ladder:replace"])


def test_missing_bundle_points_to_an_editable_install(monkeypatch, tmp_path):
    monkeypatch.setattr(probes, "PROBES_DIR", tmp_path / "gone")
    with user_error("pip install -e"):
        load_suites(["prose"])


@pytest.mark.parametrize("texts, corruption, levels, match", [
    ([""], "shuffle", (0, 50), "text 0 .* is empty"),
    (["fine", "   "], "base64", (50,), "text 1 .* is empty"),
    ([], "shuffle", (50,), "no texts"),
    (["a b c"], "shuffle", (0, 101), r"level 101 is outside \[0, 100\]"),
    (["a b c"], "shuffle", (-5,), r"level -5 is outside \[0, 100\]"),
    (["a b c"], "shuffle", (12.5,), "not a whole percentage"),
    (["a b c"], "shuffle", (10, 10), "repeat"),
    (["a b c"], "shuffle", (), "no ladder levels"),
    (["a b c"], "rot13", (50,), "unknown corruption 'rot13'; valid: shuffle, replace, char_noise, base64"),
    (["a b c"], "replace", (50,), "pass tokenizer="),
])
def test_bad_ladder_arguments(texts, corruption, levels, match):
    with user_error(match):
        ladder(texts, corruption, levels=levels)
    with user_error(match):
        ladder_spec(texts, corruption, levels=levels)


def test_bad_fraction_and_empty_text_in_corrupt():
    for fraction in (1.5, -0.1):
        with user_error(r"outside \[0, 1\]"):
            probes.corrupt("a b c", "char_noise", fraction)
    with user_error("empty text"):
        probes.corrupt("  ", "base64", 0.5)


def test_suite_texts_property():
    s = Suite("s", "id", [probes.Prompt("a", "x", "s", "id")], "src", "lic")
    assert s.texts == ["x"]


def test_other_char_is_uniform_over_the_other_printable_characters():
    rng = probes.np.random.default_rng(0)
    counts = Counter(probes._other_char("a", rng) for _ in range(200 * (len(PRINTABLE) - 1)))
    assert set(counts) == set(PRINTABLE) - {"a"}
    assert all(130 <= c <= 270 for c in counts.values())  # expected 200 each, sd ≈ 14
    assert probes._other_char("é", rng) in PRINTABLE


def test_shuffle_gives_every_chosen_position_a_different_value_when_possible():
    rng = probes.np.random.default_rng(1)
    for _ in range(50):
        units = list("aabbccddeeff")  # largest group 2 ≤ k/2 for k ≥ 4
        out = probes._shuffle(units, 1, rng)
        assert Counter(out) == Counter(units) and all(a != b for a, b in zip(out, units))
    out = probes._shuffle(list("aaaaab"), 1, rng)  # impossible for all: still a permutation that moves "b"
    assert Counter(out) == Counter("aaaaab") and out[5] == "a"


def test_derived_prompts_name_their_clean_source(tiny_tokenizer):
    prose = {p.id: p.text for p in load_suites(["prose"])[0].prompts}
    for s in load_suites(["char_noise", "base64_hex", "ladder:shuffle"], tokenizer=tiny_tokenizer):
        for p in s.prompts:
            suite_name, _, clean_id = p.source.partition("/")
            assert suite_name == "prose" and clean_id in prose, (s.name, p.id, p.source)
    assert all(p.source == "" for p in load_suites(["latex_math"])[0].prompts)


def test_difficulty_ladders_have_checkable_answers():
    from sparsescope.probes import difficulty

    add = difficulty("addition", seed=3)
    assert [s.split for s in add] == [f"addition@{d}" for d in range(1, 7)]
    for s in add:
        for p in s.prompts:
            *shots, question = p.text.split("\n")
            a, b = (int(v) for v in question.removesuffix(" =").split(" + "))
            assert p.answer == f" {a + b}" and len(str(a)) == len(str(b)) == s.level
            for shot in shots:  # worked examples are correct and of the same level
                lhs, rhs = shot.split(" = ")
                x, y = (int(v) for v in lhs.split(" + "))
                assert x + y == int(rhs) and len(str(x)) == s.level
    ops = difficulty("list_ops", levels=[1, 3])
    for s in ops:
        for p in s.prompts:
            q = p.text.split("\n\n")[-1].split("\n")
            xs = [int(v) for v in q[0].removeprefix("List: [").removesuffix("]").split(", ")]
            steps = q[1].removeprefix("Steps: ").split(", then ")
            assert len(steps) == s.level
            for step in steps:  # an independent re-implementation of the six operations
                xs = {"reverse it": xs[::-1], "sort it": sorted(xs), "drop the first number": xs[1:],
                      "drop the last number": xs[:-1], "add 1 to each number": [x + 1 for x in xs],
                      "double each number": [x * 2 for x in xs]}[step]
            assert p.answer == f" {xs}"
    assert difficulty("addition", seed=3)[0].prompts[0].text == add[0].prompts[0].text  # seeded
    with pytest.raises(UserError, match="unknown difficulty task"):
        difficulty("division")
    with pytest.raises(UserError, match="levels"):
        difficulty("addition", levels=[0])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_difficulty_answers_use_the_cached_greedy_continuation(arch):
    """`greedy` (KV cache) equals re-running the whole growing sequence per token, and `correct` compares it."""
    import dataclasses

    import torch
    from tiny import tiny_model

    from sparsescope.probes import Prompt
    from sparsescope.record.accuracy import answer_accuracy, greedy

    lm = tiny_model(arch, seed=1)
    text, ids = "12 + 30 =", lm.tokenizer("12 + 30 =")["input_ids"]
    for _ in range(8):  # the reference: a full forward over the whole sequence for every new token
        ids.append(int(lm.forward(torch.tensor([ids]))[0, -1].argmax()))
    ref = ids[-8:]
    assert greedy(lm, text, 8) == lm.tokenizer.decode(ref)
    first = lm.tokenizer.decode(ref[:1]).strip() or "?"
    right = Prompt("p0@2", text, "difficulty:addition", "addition@2", 2, answer=" " + first)
    wrong = dataclasses.replace(right, id="p1@2", answer=" " + ("7" if first == "8" else "8"))
    suite = Suite("difficulty:addition", "addition@2", [right, wrong], "test", "CC0-1.0", level=2)
    table = answer_accuracy(lm, [suite])
    n_new = len(lm.tokenizer(right.answer, add_special_tokens=False)["input_ids"]) + 1
    assert table["output"].tolist() == [lm.tokenizer.decode(ref[:n_new])] * 2
    assert table["correct"].tolist() == [lm.tokenizer.decode(ref[:1]).strip() == first, False]
