"""sft-generate and sft-eval on a real training run: the held-out records are the ones training held out, whatever
data.max_records says and after records are appended to the file; the reference loss is the run's eval_loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import make_char_tokenizer, run_sft, write_jsonl

RECORDS = [{"instruction": f"Name thing {i}.", "input": "", "output": f"thing {i}"} for i in range(100)]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tiny_dir: Path, tmp_path_factory: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heldout")
    data = write_jsonl(root / "records.jsonl", RECORDS)
    run = root / "run"
    proc = run_sft("train", f"model.path={tiny_dir}", "quant=nf4", "prompt=custom", f"data.path={data}",
                   "data.eval_path=null", "data.eval_fraction=0.2", "data.max_seq_len=64", "train.micro_batch_size=4",
                   "train.grad_accum=1", "train.max_steps=2", "train.eval_at_start=false", f"out_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "data": data, "run": run}


def held_out_by_training(run: Path) -> set[str]:
    """The instructions training evaluated on, read back from its prepared eval rows (the character tokenizer
    decodes ids to the text they came from)."""
    import datasets

    from sft.io import cache_root

    key = json.loads((run / "report.json").read_text())["cache"]["key"]
    rows = datasets.Dataset.from_file(str(cache_root() / "datasets" / key / "eval.arrow"))
    texts = [make_char_tokenizer().decode(r["input_ids"], skip_special_tokens=True) for r in rows]
    held = {r["instruction"] for r in RECORDS if any(t.startswith(r["instruction"] + "\n") for t in texts)}
    assert len(held) == len(texts) and 5 < len(held) < 40  # a fifth of 100 on average
    return held


def instructions(path: Path) -> list[str]:
    return [json.loads(line)["instruction"] for line in path.read_text().splitlines()]


def test_split_eval_uses_only_what_training_held_out_before_and_after_appending(trained: dict[str, Path]) -> None:
    held = held_out_by_training(trained["run"])
    for attempt in ("as trained", "after appending 50 records"):
        out = trained["root"] / attempt.replace(" ", "-")
        gen = run_sft("generate", f"adapter={trained['run']}", "split=eval", "data.max_records=5",
                      "generation.max_new_tokens=2", f"out_dir={out / 'generate'}")
        assert gen.returncode == 0, gen.stderr[-3000:]
        got = instructions(out / "generate" / "generations.jsonl")
        assert len(got) == 5 and set(got) <= held, attempt
        ev = run_sft("eval", f"adapter={trained['run']}", "data.max_records=5", "compare_base=false",
                     "generation.max_new_tokens=2", f"out_dir={out / 'eval'}")
        assert ev.returncode == 0, ev.stderr[-3000:]
        assert set(instructions(out / "eval" / "adapter" / "generations.jsonl")) == set(got), attempt
        more = [{"instruction": f"Another thing {i}.", "input": "", "output": f"other {i}"} for i in range(50)]
        write_jsonl(trained["data"], RECORDS + more)


def test_the_run_records_its_held_out_records_and_sft_eval_refuses_a_run_whose_data_gives_others(
        trained: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from sft.data.splits import record_hash

    write_jsonl(trained["data"], RECORDS)  # the file as trained
    recorded = json.loads((trained["run"] / "held_out.json").read_text())["sources"]["records"]
    assert {RECORDS[i]["instruction"] for i, _ in recorded["records"]} == held_out_by_training(trained["run"])
    assert all(h == record_hash({**RECORDS[i], "id": i}) for i, h in recorded["records"])
    assert (recorded["path"], recorded["eval_fraction"], recorded["split_seed"]) == (str(trained["data"]), 0.2, 0)
    # the record of another split (as a changed split rule would give): the run's first held-out record is absent
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    first = recorded["records"][0][0]
    recorded["records"] = recorded["records"][1:]
    (run / "held_out.json").write_text(json.dumps({"format": 1, "sources": {"records": recorded}}))
    for command, extra in (("eval", ()), ("generate", ("split=eval",))):
        out = tmp_path / command
        proc = run_sft(command, f"adapter={run}", *extra, "generation.max_new_tokens=2", f"out_dir={out}")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {run}: data source 'records' ({trained['data']}) now gives held-out records that "
                          f"do not match the {len(recorded['records'])} in its held_out.json: 1 that it did not hold "
                          f"out (records {first}): it may have trained on them. The file, the data settings or sft's "
                          "split rule changed since training; restore the file and settings, or evaluate on other "
                          "data explicitly (data.path=... data.eval_path=...)"], proc.stderr[-3000:]
        assert not out.exists()


def test_reference_loss_is_the_runs_final_eval_loss(trained: dict[str, Path]) -> None:
    write_jsonl(trained["data"], RECORDS)  # the file as trained
    out = trained["root"] / "loss"
    ev = run_sft("eval", f"adapter={trained['run']}", "quant=nf4", "generate=false", "compare_base=false", f"out_dir={out}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    final = [json.loads(line) for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["step"] == 2 and "eval_loss" in final
    result = json.loads((out / "eval.json").read_text())["results"]["adapter"]
    assert result["loss"] == pytest.approx(final["eval_loss"], rel=1e-4)
    assert result["examples"] == len(held_out_by_training(trained["run"]))


def test_a_mixture_run_is_evaluated_on_each_sources_held_out_records_with_a_table_per_source(
        tiny_dir: Path, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", RECORDS[:40])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"Count to {i}.", "output": " ".join(map(str, range(i)))}
                                          for i in range(1, 21)])
    run = tmp_path / "run"
    sources = f"data.sources=[{{path:{a},weight:1,eval_fraction:0.2}},{{path:{b},weight:1,eval_fraction:0.3}}]"
    proc = run_sft("train", f"model.path={tiny_dir}", "quant=nf4", "prompt=custom", sources, "data.max_seq_len=64",
                   "train.micro_batch_size=4", "train.grad_accum=1", "train.max_steps=2", "train.eval_at_start=false",
                   f"out_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    ev = run_sft("eval", f"adapter={run}", "quant=nf4", "compare_base=false", "generation.max_new_tokens=2",
                 f"out_dir={tmp_path / 'eval'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]["adapter"]
    report = json.loads((run / "report.json").read_text())["sources"]
    for name in ("a", "b"):  # the records each source held out, scored and with the loss training logged for it
        assert result["sources"][name]["examples"] == report[name]["splits"]["eval"]["kept"]
        assert result["sources"][name]["loss"] == pytest.approx(final[f"eval_loss/{name}"], rel=1e-4)
    assert result["loss"] == pytest.approx(final["eval_loss"], rel=1e-4)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "adapter" / "generations.jsonl").read_text().splitlines()]
    assert sorted({r["source"] for r in rows}) == ["a", "b"] and len(rows) == result["examples"]
    table = (tmp_path / "eval" / "eval.md").read_text()
    assert "source a:" in table and "source b:" in table and table.count("| loss |") == 3
    page = (tmp_path / "eval" / "eval.html").read_text()  # every example, and a table per source too
    assert page.count('<section class="example') == len(rows) and page.count("<h3>source ") == 2
