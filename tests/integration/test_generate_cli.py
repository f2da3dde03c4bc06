"""`sft-generate` as a user runs it, on a tiny random Llama with a character tokenizer (fast): identical files
for one seed, resume after a kill, the run directory's base and template, refusals with one clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_char_tokenizer, run_sft, tiny_llama, write_jsonl, write_run_config

RECORDS = [
    {"instruction": f"Say something about item {i}.", "input": "" if i % 3 else f"context {i}", "output": f"answer {i}"}
    for i in range(10)
]
CUSTOM = {"name": "custom", "template_input": "Q: {instruction} ({input}) A:", "template_no_input": "Q: {instruction} A:",
          "system": None, "end_of_turn": None}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread in the commands run: on a shared 2-core machine a second one mostly waits."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def save_base(path: Path, seed: int) -> Path:
    tiny_llama(vocab_size=128, seed=seed).save_pretrained(path)
    make_char_tokenizer().save_pretrained(path)
    return path


def save_adapter(base: Path, path: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    base, other = save_base(root / "base", 0), save_base(root / "other", 1)
    run = root / "run"
    save_adapter(base, run / "adapter")
    write_run_config(run, str(base), {"path": "train.jsonl"}, CUSTOM)
    return {"base": base, "other": other, "run": run, "data": write_jsonl(root / "prompts.jsonl", RECORDS)}


def generate(tiny: dict[str, Path], out: Path, *overrides: str):
    return run_sft("generate", f"model.path={tiny['base']}", f"data.path={tiny['data']}", f"out_dir={out}",
                   "generation.max_new_tokens=12", *overrides)


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]


SAMPLED = ["generation=sampled", "generation.temperature=1.0", "generation.num_return_sequences=2"]


def test_one_seed_gives_identical_files_and_another_seed_other_samples(tiny, tmp_path) -> None:
    ok(generate(tiny, tmp_path / "a", *SAMPLED, "generation.seed=5", "generation.batch_size=4"))
    ok(generate(tiny, tmp_path / "b", *SAMPLED, "generation.seed=5", "generation.batch_size=3"))
    ok(generate(tiny, tmp_path / "c", *SAMPLED, "generation.seed=6", "generation.batch_size=4"))
    for name in ("generations.jsonl", "alpaca_eval.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a, c = rows(tmp_path / "a"), rows(tmp_path / "c")
    assert [(r["id"], r["sample"]) for r in a] == [(i, s) for i in range(10) for s in range(2)]
    assert sum(x["output"] != y["output"] for x, y in zip(a, c)) >= 10
    assert a[0]["prompt"].startswith("Below is an instruction") and a[0]["reference"] == "answer 0"
    assert {r["finish_reason"] for r in a} <= {"eos", "stop", "length"}
    assert all(r["seed"] == 5 and r["generated_tokens"] <= 12 for r in a)
    assert len({r["sample_seed"] for r in a}) == 20
    export = json.loads((tmp_path / "a" / "alpaca_eval.json").read_text())
    assert len(export) == 10 and set(export[0]) == {"instruction", "output", "generator"}
    sidecar = json.loads((tmp_path / "a" / "generation_config.json").read_text())
    assert sidecar["complete"] and sidecar["identity"]["generation"]["seed"] == 5 and "torch" in sidecar["versions"]


def test_an_interrupted_run_resumes_to_the_uninterrupted_file(tiny, tmp_path) -> None:
    args = (*SAMPLED, "generation.batch_size=4", "generation.logprobs=true")
    ok(generate(tiny, tmp_path / "full", *args))
    ok(generate(tiny, tmp_path / "cut", *args))
    path = tmp_path / "cut" / "generations.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    (tmp_path / "cut" / "alpaca_eval.json").unlink()
    path.write_bytes(b"".join(lines[:3]) + b"".join(lines[7:9]) + lines[12][:40])  # lost rows, a torn last line
    proc = generate(tiny, tmp_path / "cut", *args)
    ok(proc)
    assert "resuming" in proc.stderr and "5 of 20" in proc.stderr
    for name in ("generations.jsonl", "alpaca_eval.json"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    changed = generate(tiny, tmp_path / "cut", *args, "generation.top_p=0.5")
    assert changed.returncode == 1 and "generation.top_p" in changed.stderr


def test_a_run_directory_fixes_base_and_template(tiny, tmp_path) -> None:
    proc = run_sft("generate", f"adapter={tiny['run']}", f"data.path={tiny['data']}", f"out_dir={tmp_path / 'g'}",
                   "generation.max_new_tokens=6")
    ok(proc)
    first = rows(tmp_path / "g")[0]
    assert first["prompt"] == "Q: Say something about item 0. (context 0) A:"
    sidecar = json.loads((tmp_path / "g" / "generation_config.json").read_text())
    assert sidecar["identity"]["model"] == str(tiny["base"])
    assert sidecar["identity"]["adapter"]["path"] == str(tiny["run"] / "adapter")
    assert len(sidecar["identity"]["adapter"]["sha256"]) == 64
    base = generate(tiny, tmp_path / "base", "prompt=custom", f"prompt.template_input='{CUSTOM['template_input']}'",
                    f"prompt.template_no_input='{CUSTOM['template_no_input']}'", "generation.max_new_tokens=6")
    ok(base)
    assert [r["prompt"] for r in rows(tmp_path / "base")] == [r["prompt"] for r in rows(tmp_path / "g")]
    assert [r["output"] for r in rows(tmp_path / "base")] != [r["output"] for r in rows(tmp_path / "g")]


@pytest.mark.parametrize("which", ["run", "adapter"])
def test_an_adapter_of_another_base_is_refused_naming_both(tiny, tmp_path, which) -> None:
    adapter = tiny["run"] if which == "run" else tiny["run"] / "adapter"
    if which == "adapter":  # a bare adapter directory: PEFT's record of the base is all there is
        adapter = save_adapter(tiny["base"], tmp_path / "bare")
    proc = run_sft("generate", f"adapter={adapter}", f"model.path={tiny['other']}", f"data.path={tiny['data']}",
                   f"out_dir={tmp_path / 'g'}")
    assert proc.returncode == 1
    assert str(tiny["base"]) in proc.stderr and str(tiny["other"]) in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "g").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["generation.temperature=-1", "generation.top_p=1.5", "generation.top_k=-2"],
         ["generation.temperature=-1", "generation.top_p=1.5", "generation.top_k=-2"]),
        (["generation.num_beams=2", "generation=sampled"], ["generation.num_beams=2"]),
        (["generation=nucleus"], ["generation", "nucleus"]),
        (["generation.tempreature=1"], ["tempreature"]),
        (["adapter=/nonexistent/run"], ["adapter=/nonexistent/run", "not found"]),
        (["max_prompt_tokens=8", "long_prompt=error"], ["record 0", "max_prompt_tokens"]),
        (["long_prompt=maybe"], ["long_prompt='maybe'"]),
        (["generation.max_new_tokens=600"], ["generation.max_new_tokens=600", "context is 512 tokens"]),
        (["generation.num_beams=2", "generation.logprobs=true"], ["generation.logprobs=true"]),
    ],
)
def test_bad_settings_fail_at_start_with_the_key_named(tiny, tmp_path, overrides, message) -> None:
    proc = generate(tiny, tmp_path / "g", *overrides)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert all(m in proc.stderr for m in message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())


def test_no_prompts_is_one_clear_error(tiny, tmp_path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run_sft("generate", f"model.path={tiny['base']}", f"data.path={empty}", f"out_dir={tmp_path / 'g'}")
    assert proc.returncode == 1 and str(empty) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "g").exists()


def test_long_prompts_are_cut_from_the_left_with_a_warning(tiny, tmp_path) -> None:
    ok(generate(tiny, tmp_path / "g", "max_prompt_tokens=10", "generation.max_new_tokens=4"))
    proc_rows = rows(tmp_path / "g")
    assert all(r["prompt_tokens"] == 10 for r in proc_rows)


def test_prompts_without_outputs_generate_with_no_reference(tiny, tmp_path) -> None:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": r["instruction"], "input": r["input"]} for r in RECORDS[:3]])
    ok(run_sft("generate", f"model.path={tiny['base']}", f"data.path={prompts}", f"out_dir={tmp_path / 'g'}",
               "generation.max_new_tokens=4"))
    assert [r["reference"] for r in rows(tmp_path / "g")] == [None, None, None]


def test_split_eval_of_a_run_directory_is_the_split_training_drew(tiny, tmp_path) -> None:
    from sft.config import DataConfig
    from sft.data.prepare import load_splits

    run = tmp_path / "run"
    save_adapter(tiny["base"], run / "adapter")
    data = {"path": str(tiny["data"]), "eval_path": None, "eval_fraction": 0.3, "max_seq_len": 128, "split_seed": 7}
    write_run_config(run, str(tiny["base"]), data, CUSTOM, seed=7)
    held_out = load_splits(DataConfig(**data))[0]["eval"]
    assert 0 < len(held_out) < len(RECORDS)

    # no data settings given: the run's data and split seed (the defaults would be the demo's file, split=eval fails)
    proc = run_sft("generate", f"adapter={run}", "split=eval", f"out_dir={tmp_path / 'g'}", "generation.max_new_tokens=4")
    ok(proc)
    assert "split=eval of the training run's data" in proc.stdout
    assert sorted(r["instruction"] for r in rows(tmp_path / "g")) == sorted(r["instruction"] for r in held_out)
    # data.* keys given on the command line apply on top of the run's data settings
    mine = run_sft("generate", f"adapter={run}", "split=eval", "data.eval_fraction=0.5", f"out_dir={tmp_path / 'h'}",
                   "generation.max_new_tokens=4")
    ok(mine)
    half = load_splits(DataConfig(**{**data, "eval_fraction": 0.5}))[0]["eval"]
    assert sorted(r["instruction"] for r in rows(tmp_path / "h")) == sorted(r["instruction"] for r in half)
    assert 2 <= len(half) <= 8 and len(half) != len(held_out)  # half of 10 on average: another split than 0.3
    # a run whose data file is not where its config.yaml says, seen from here: one message, nothing written
    lost = run_sft("generate", f"adapter={tiny['run']}", "split=eval", f"out_dir={tmp_path / 'm'}")
    assert lost.returncode == 1 and "Traceback" not in lost.stderr
    assert f"data.path=train.jsonl (from {tiny['run']}/config.yaml) is not found from here" in lost.stderr
    assert not (tmp_path / "m").exists()


CHAT_A = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
          "{% if add_generation_prompt %}<assistant>{% endif %}")
CHAT_B = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[bot]{% endif %}"


def test_a_run_keeps_its_own_tokenizer_and_chat_template(tmp_path) -> None:
    """The base's template changes after training (a Hub update): sft-generate adapter=RUN still renders the
    prompts with the template the run was trained with, saved in its tokenizer/."""
    base = save_base(tmp_path / "base", 0)
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = CHAT_A
    tokenizer.save_pretrained(base)
    run = tmp_path / "run"
    save_adapter(base, run / "adapter")
    write_run_config(run, str(base), {"path": "train.jsonl"}, {"name": "chat"}, tokenizer=tokenizer)
    data = write_jsonl(tmp_path / "p.jsonl", RECORDS[:2])
    tokenizer.chat_template = CHAT_B
    tokenizer.save_pretrained(base)  # the base now renders "[user] ..."
    ok(run_sft("generate", f"adapter={run}", f"data.path={data}", f"out_dir={tmp_path / 'g'}", "generation.max_new_tokens=2"))
    assert [r["prompt"] for r in rows(tmp_path / "g")] == [f"<user>{r['instruction']}" + (f"\n\n{r['input']}" if r["input"] else "")
                                                         + "</s><assistant>" for r in RECORDS[:2]]
    ok(run_sft("generate", f"model.path={base}", "prompt=chat", f"data.path={data}", f"out_dir={tmp_path / 'b'}",
               "generation.max_new_tokens=2"))
    assert rows(tmp_path / "b")[0]["prompt"].startswith("[user] ")  # the base alone: its current template
