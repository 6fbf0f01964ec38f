"""Training rollouts, validation, `prorl-jax eval` and `prorl-jax generate` stop on the same
token ids: every EOS id of the checkpoint (tokenizer, config.json, generation_config.json).

The checkpoint here is like Qwen2.5-Instruct's: the tokenizer's EOS is <|im_end|> (2) and
generation_config.json lists more EOS ids ([2, 0, 5]). Each path's stop ids are read where
they enter the compiled sampler, so a path that forgot one source would show here.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from prorl_jax.cli import main
from prorl_jax.sampling import engine, sampler

GEN_EOS = [2, 0, 5]
EXPECTED = (0, 2, 5)


@pytest.fixture(scope="module")
def multi_eos_dir(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("multi_eos") / "ckpt"
    shutil.copytree(tiny_model_dir, path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": GEN_EOS}))
    return path


@pytest.fixture()
def seen_stop_ids(monkeypatch):
    """The stop ids of every compiled sampler call, static engine (`_sample_chunk`) or
    continuous (`_decode_block`), the -1 padding dropped."""
    seen = []

    def spy_on(module, name, position):
        original = getattr(module, name)

        def spy(*args, **kwargs):
            seen.append(tuple(int(t) for t in np.asarray(args[position]) if t >= 0))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    spy_on(sampler, "_sample_chunk", 10)
    spy_on(engine, "_decode_block", 5)
    return seen


@pytest.mark.slow  # four sampler programs and a reward pool: ~1.5 min on a loaded 2-core box
def test_all_four_paths_stop_on_every_eos_id(multi_eos_dir, make_config, tmp_path, capsys,
                                             seen_stop_ids):
    from prorl_jax.rl.trainer import Trainer, seed_for

    # Held-out prompts: the training source (short prompts) at another seed.
    val = [dataclasses.replace(s, seed=9) for s in make_config(multi_eos_dir).data.sources]
    cfg = make_config(multi_eos_dir, data={"val_sources": val},
                      validation={"num_prompts": 2, "max_new_tokens": 4})
    trainer = Trainer(cfg, tmp_path / "run", console=lambda *a: None)
    try:
        assert trainer.stop_ids == EXPECTED
        trainer.worker.collect(trainer.state.params, trainer.iterator,
                               lambda i: seed_for(0, 0, i))
        assert seen_stop_ids and set(seen_stop_ids) == {EXPECTED}, "training rollouts"
        seen_stop_ids.clear()
        trainer.validate()
        assert seen_stop_ids and set(seen_stop_ids) == {EXPECTED}, "validation"
    finally:
        trainer.close()

    seen_stop_ids.clear()
    assert main(["eval", "--model", str(multi_eos_dir), "--data", "reasoning_gym:chain_sum",
                 "--limit", "2", "--n", "1", "--max-new-tokens", "4", "--reward-workers", "1",
                 "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    assert seen_stop_ids and set(seen_stop_ids) == {EXPECTED}, "prorl-jax eval"

    seen_stop_ids.clear()
    assert main(["generate", "--model", str(multi_eos_dir), "--prompt", "1 + 1 =",
                 "--max-new-tokens", "4"]) == 0
    assert seen_stop_ids and set(seen_stop_ids) == {EXPECTED}, "prorl-jax generate"
    capsys.readouterr()
