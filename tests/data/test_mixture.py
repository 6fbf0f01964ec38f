"""The weighted, seeded, resumable mixture: resume == uninterrupted, weights hold, epochs."""

import json
import logging

import numpy as np
import pytest

from prorl_jax.config import DataConfig, SourceConfig
from prorl_jax.data import PromptIterator, build_iterator, make_record
from prorl_jax.errors import ConfigError, DataError


def recs(name, n, domain="math"):
    return [make_record(f"{name}{i}", domain, f"{name} question {i}", str(i)) for i in range(n)]


def mixture(seed=0, weights=(3.0, 1.0, 1.0), sizes=(50, 7, 20), **kw):
    return PromptIterator([recs(n, s) for n, s in zip("abc", sizes)], weights, seed=seed,
                          names=list("abc"), **kw)


def ids(batch):
    return [r.id for r in batch]


@pytest.mark.parametrize("split_after", [0, 1, 3, 7, 12])
def test_resume_reproduces_the_uninterrupted_sequence(split_after):
    sizes = [5, 11, 13, 8, 17, 3, 9, 21, 6, 10, 4, 30, 7, 2, 19]  # crosses several epochs
    full = mixture()
    expected = [ids(full.next_batch(n)) for n in sizes]
    first = mixture()
    got = [ids(first.next_batch(n)) for n in sizes[:split_after]]
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = mixture()  # a fresh process: nothing cached
    resumed.load_state_dict(state)
    got += [ids(resumed.next_batch(n)) for n in sizes[split_after:]]
    assert got == expected
    assert resumed.epoch == full.epoch and resumed.samples_seen == full.samples_seen == sum(sizes)


def test_same_seed_same_order_other_seed_other_order():
    assert ids(mixture(seed=1).next_batch(200)) == ids(mixture(seed=1).next_batch(200))
    assert ids(mixture(seed=1).next_batch(200)) != ids(mixture(seed=2).next_batch(200))


def test_mixture_weights_hold_statistically():
    it = mixture(weights=(0.6, 0.1, 0.3), sizes=(40, 9, 25))
    assert it.epoch_size == 74 and it.quotas.tolist() == [44, 8, 22]
    n_batches, bs = 400, 16
    counts = np.zeros((n_batches, 3))
    for b in range(n_batches):
        for r in it.next_batch(bs):
            counts[b, "abc".index(r.id[0])] += 1
    share = counts.sum(0) / counts.sum()
    # Each epoch holds exactly its quota, so the long-run share is the weight up to rounding.
    np.testing.assert_allclose(share, [44 / 74, 8 / 74, 22 / 74], atol=2e-3)
    np.testing.assert_allclose(share, [0.6, 0.1, 0.3], atol=0.01)
    # Per batch it is a random draw: the per-batch count of source a varies (not a fixed
    # pattern), with about the hypergeometric spread (var ~ n p (1-p) (N-n)/(N-1)).
    p = 44 / 74
    var = bs * p * (1 - p) * (74 - bs) / 73
    assert 0.6 * var < counts[:, 0].var() < 1.6 * var


def test_epochs_reshuffle_and_down_weighted_sources_still_cycle():
    it = mixture(weights=(50, 7, 20), sizes=(50, 7, 20))  # weights = sizes: each record once
    e0 = ids(it.next_batch(77))
    assert it.epoch == 1 and it.position == 0
    e1 = ids(it.next_batch(77))
    assert sorted(e0) == sorted(e1) == sorted(f"{n}{i}" for n, s in zip("abc", (50, 7, 20))
                                              for i in range(s))
    assert e0 != e1  # a fresh shuffle every epoch
    # Source c at weight 1/5 of 77 slots = 15 per epoch < its 20 records: it keeps cycling
    # through a full pass before repeating anything.
    it = mixture(weights=(3, 1, 1), sizes=(50, 7, 20))
    assert it.quotas.tolist() == [46, 16, 15]  # 46.2, 15.4, 15.4: largest remainder
    c = [i for i in ids(it.next_batch(77 * 4)) if i[0] == "c"]
    assert len(c) == 60
    assert sorted(c[:20]) == sorted(c[20:40]) == sorted(f"c{i}" for i in range(20))


def test_unshuffled_order_is_fixed_and_interleaved():
    it = mixture(weights=(1, 1, 1), sizes=(6, 3, 3), shuffle=False)
    first = ids(it.next_batch(12))
    assert first[:6] == ["a0", "b0", "c0", "a1", "b1", "c1"]
    assert [i for i in first if i[0] == "a"] == ["a0", "a1", "a2", "a3"]


def test_state_from_other_data_is_refused():
    state = mixture(seed=0).state_dict()
    with pytest.raises(DataError, match="saved over different data, seed or weights"):
        mixture(seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="saved over different data"):
        mixture(sizes=(50, 7, 21)).load_state_dict(state)
    other = mixture(seed=1)
    other.load_state_dict({**state, "position": 5}, strict=False)
    assert other.position == 5
    with pytest.raises(DataError, match="malformed"):
        mixture().load_state_dict({"epoch": 1})
    with pytest.raises(DataError, match="out of range"):
        mixture().load_state_dict({**state, "position": 10**6})


def test_source_counts_peeks_without_consuming():
    it = mixture()
    it.next_batch(30)
    counts = it.source_counts(40)
    batch = it.next_batch(40)
    assert counts == {n: sum(r.id[0] == n for r in batch) for n in "abc"}


def test_build_iterator_train_and_val(tmp_path, caplog):
    for name, n in (("train", 30), ("val", 6)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"prompt": f"{name} {i}", "ground_truth": str(i)}) + "\n" for i in range(n)))
    cfg = DataConfig(
        sources=(SourceConfig(kind="jsonl", path=str(tmp_path / "train.jsonl"), domain="math"),
                 SourceConfig(kind="reasoning_gym", tasks=("gcd",), size=10, weight=0.5)),
        val_sources=(SourceConfig(kind="jsonl", path=str(tmp_path / "val.jsonl"), domain="math"),),
        seed=3)
    train = build_iterator(cfg)
    assert train.names == ["train", "reasoning_gym"] and train.quotas.tolist() == [27, 13]
    assert train.skipped == {"train": 0, "reasoning_gym": 0}
    assert ids(build_iterator(cfg).next_batch(50)) == ids(train.next_batch(50))
    caplog.set_level(logging.WARNING)
    val = build_iterator(cfg, split="val")
    assert ids(val.next_batch(6)) == [f"val:{i}" for i in range(1, 7)]  # fixed file order
    assert "use the training seed" not in caplog.text
    overlap = DataConfig(sources=cfg.sources, val_sources=(
        SourceConfig(kind="reasoning_gym", tasks=("gcd",), size=3),))
    assert ids(build_iterator(overlap, split="val").next_batch(3)) == \
        ids([r for r in train.sources[1] if r.id.endswith((":0", ":1", ":2"))])
    assert "validation reasoning_gym tasks gcd use the training seed 0" in caplog.text
    with pytest.raises(ConfigError, match="data.val_sources is empty"):
        build_iterator(DataConfig(sources=cfg.sources), split="val")
    with pytest.raises(ConfigError, match="split must be"):
        build_iterator(cfg, split="test")


def _gym(size, seed, lo, hi):
    return SourceConfig(kind="reasoning_gym", tasks=("spell_backward",), size=size, seed=seed,
                        task_config={"spell_backward": {"min_word_len": lo, "max_word_len": hi}})


def test_exclude_prompts_drops_held_out_text_and_counts_it():
    from prorl_jax.data import load_reasoning_gym

    train_src = _gym(3000, 500, 3, 3)  # 3-letter words repeat: a held-out word is in here
    cfg = DataConfig(sources=(train_src,))
    every = build_iterator(cfg).sources[0]
    held_out = {r.prompt for r in load_reasoning_gym(_gym(50, 7, 3, 3))}
    hits = sum(r.prompt in held_out for r in every)
    assert hits > 0
    it = build_iterator(cfg, exclude_prompts=held_out)
    assert len(it.sources[0]) == len(every) - hits
    assert it.excluded == {it.names[0]: hits}
    assert not any(r.prompt in held_out for r in it.sources[0])
    assert build_iterator(cfg).excluded == {it.names[0]: 0}


def test_a_source_of_nothing_but_held_out_prompts_is_refused():
    from prorl_jax.data import load_reasoning_gym

    src = _gym(20, 7, 6, 6)
    cfg = DataConfig(sources=(src,))
    with pytest.raises(DataError, match="all 20 records are held-out prompts"):
        build_iterator(cfg, exclude_prompts={r.prompt for r in load_reasoning_gym(src)})
