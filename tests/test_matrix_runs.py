"""The support matrix: runs (ran / not run), declined models, path spelling, N/A vs not run cells."""

import copy
import json
import random
from html.parser import HTMLParser

import pytest

from pytest_invarlock import matrix
from pytest_invarlock.matrix_docs import DECLINED, NOT_RUN, _grid, html, markdown
from pytest_invarlock.resources import validate

FIXTURES = {"gpt2", "llama-gqa", "bert-tiny"}


def evidence(rec, lane):
    """Add what the plugin writes into every record: profile, source and the profile's lane id."""
    from pytest_invarlock.hf_adapter import PROFILE
    from pytest_invarlock.profile import Case, labels

    case = Case("hf_adapter", rec["adapter"], rec["adapter"], rec["model"], None,
                labels(family=rec["family"], role=rec["role"]))
    return rec | {"profile": "hf_adapter", "lane_id": PROFILE.lane_id(case, lane),
                  "source": "fixture" if rec["model"] in FIXTURES else "path"}
NO_CUDA = ("lane cuda needs a CUDA device and torch.cuda.is_available() is False "
           "(torch 2.13.0+cpu); run it on a GPU machine")


def prov(device="cpu", name=None, commit="a" * 40):
    return {"python": "3.11.7", "platform": "linux", "machine": "x86_64",
            "packages": {"pytest-invarlock": "0.1.0", "torch": "2.13.0+cpu",
                         "transformers": "5.23.0", "safetensors": "0.8.0", "pytest": "9.2.0"},
            "device": {"type": device, "name": name}, "commit": commit}


def adapter(label, declined=()):
    return {"name": label, "label": label, "target": "pytest_invarlock.adapters.roles:Foo",
            "origin": "builtin", "distribution": "pytest-invarlock", "version": "0.1.0",
            "declined": [dict(d) for d in declined]}


def record(adapter="hf_causal", model="gpt2", family="gpt2", role="causal", check="check_a",
           outcome="passed"):
    return {"adapter": adapter, "model": model, "check": check, "outcome": outcome,
            "message": "", "family": family, "role": role, "level": "MUST"}


def lane_results(lane="cpu", records=(), adapters=(), status=None, reason=None, **kw):
    payload = {"format_version": "invarlock-lane-results-v1", "lane": lane,
               "provenance": prov(**kw), "adapters": list(adapters),
               "records": [evidence(r, lane) for r in records]}
    if status:
        payload |= {"status": status, "reason": reason}
    return payload


def not_run_cuda():
    return lane_results("cuda", status="not_run", reason=NO_CUDA, device="cpu",
                        adapters=[adapter("hf_causal")])


def cpu_ran():
    decline = {"model": "bert-tiny", "family": "bert", "role": "mlm",
               "reason": "can_handle() returned False"}
    return lane_results("cpu", records=[record(), record(check="check_b")], status="ran",
                        adapters=[adapter("hf_causal", [decline])])


# -- the lane results schema ------------------------------------------------------------------


def test_lane_results_schema_takes_the_new_fields_and_older_files():
    assert validate(not_run_cuda(), "lane_results") == []
    assert validate(cpu_ran(), "lane_results") == []
    old = lane_results(records=[record()])  # no status, reason, label or declined: still valid
    assert validate(old, "lane_results") == []
    odd = lane_results(records=[record(adapter="pytest-invarlock:hf_causal")],
                       adapters=[adapter("pytest-invarlock:hf_causal"),
                                 adapter("my_pkg.adapters:MyAdapter")])
    assert validate(odd, "lane_results") == []


@pytest.mark.parametrize("spoil", [
    lambda p: p.update(records=[record()]),  # a not_run file has no records
    lambda p: p.pop("reason"),  # ... and says why
    lambda p: p.update(status="skipped"),
    lambda p: p["adapters"][0]["declined"].append({"model": "gpt2", "family": None,
                                                   "role": None}),  # a decline has a reason
    lambda p: p["adapters"][0].update(label=""),
])
def test_lane_results_schema_refuses_malformed_new_fields(spoil):
    payload = not_run_cuda()
    spoil(payload)
    assert validate(payload, "lane_results") != []


# -- not run lanes ------------------------------------------------------------------------------


def test_a_not_run_lane_adds_no_lane_and_is_listed_with_its_reason():
    built = matrix.build([("results/cuda.json", not_run_cuda()),
                          ("results/cpu.json", cpu_ran())])
    assert validate(built, "support_matrix") == []
    assert [lane["lane_id"] for lane in built["lanes"]] == ["gpt2-causal-hf-cpu"]
    assert all(lane["family"] != "unknown" for lane in built["lanes"])
    assert built["runs"] == [
        {"source": "results/cpu.json", "lane": "cpu", "status": "ran", "reason": None,
         "device": "cpu", "python": "3.11.7", "commit": "a" * 40,
         "packages": {"pytest-invarlock": "0.1.0", "torch": "2.13.0+cpu",
                      "transformers": "5.23.0", "safetensors": "0.8.0", "pytest": "9.2.0"}},
        {"source": "results/cuda.json", "lane": "cuda", "status": "not_run", "reason": NO_CUDA,
         "device": "cpu", "python": "3.11.7", "commit": "a" * 40,
         "packages": {"pytest-invarlock": "0.1.0", "torch": "2.13.0+cpu",
                      "transformers": "5.23.0", "safetensors": "0.8.0", "pytest": "9.2.0"}}]
    md, page = markdown(built), html(built)
    assert f"| cuda | not run here | results/cuda.json | cpu | 3.11.7 | 2.13.0+cpu | 5.23.0 | " \
           f"{'a' * 12} | {NO_CUDA} |" in md
    assert "| cpu | ran | results/cpu.json | cpu | 3.11.7 | 2.13.0+cpu | 5.23.0 | aaaaaaaaaaaa |" \
        in md
    for lane in ("cpu-quant", "cuda-quant"):
        assert f"| {lane} | no results |" in md
        assert f"<td>{lane}</td><td class=\"noresults\">no results</td>" in page
    assert '<td class="notrun">not run here</td>' in page
    assert f"<td>{NO_CUDA}</td>" in page
    assert "runtime `cuda`" not in md and "runtime cuda" not in page  # no grid for it


def test_a_not_run_file_alone_gives_an_empty_valid_matrix():
    built = matrix.build([("results/cuda.json", not_run_cuda())])
    assert validate(built, "support_matrix") == []
    assert built["lanes"] == [] and built["conflicts"] == []
    assert [r["status"] for r in built["runs"]] == ["not_run"]
    HTMLParser().feed(html(built))
    assert "| cuda | not run here |" in markdown(built)


def test_records_in_a_not_run_file_are_ignored_even_if_present():
    payload = not_run_cuda() | {"records": [record(family=None, role=None, model="/ckpt")]}
    assert matrix.build([("results/cuda.json", payload)])["lanes"] == []


def test_records_without_a_family_never_make_a_real_checkpoint():
    payload = lane_results(records=[record(model="/models/llama-7b", family=None, role=None)])
    (lane,) = matrix.build([("a.json", payload)])["lanes"]
    assert (lane["family"], lane["role"]) == ("unknown", "unknown")
    assert lane["evidence"]["real_checkpoint"] is False
    assert lane["support_tier"] == "supported_experimental"
    assert any("never make a lane's real_checkpoint true" in r for r in matrix.TIER_RULES)
    real = lane_results(records=[record(model="/models/gpt2-large")])
    (lane,) = matrix.build([("a.json", real)])["lanes"]
    assert lane["evidence"]["real_checkpoint"] is True
    assert lane["support_tier"] == "published_basis"


def test_lane_provenance_lists_the_commits_of_the_runs_that_gave_records():
    built = matrix.build([
        ("a.json", lane_results(records=[record()], commit="b" * 40)),
        ("b.json", lane_results(records=[record()], commit="a" * 40)),
        ("c.json", lane_results(records=[record()], commit=None)),
        ("d.json", lane_results("cuda", status="not_run", reason=NO_CUDA, commit="c" * 40)),
    ])
    assert validate(built, "support_matrix") == []
    (lane,) = built["lanes"]
    assert lane["provenance"]["commits"] == ["a" * 40, "b" * 40]
    assert lane["provenance_source"] == "a.json, b.json, c.json"
    assert [r["commit"] for r in built["runs"]] == ["b" * 40, "a" * 40, None, "c" * 40]


def test_the_device_actually_used_is_recorded_per_run_and_lane():
    gpu = lane_results("cuda", records=[record()], status="ran", device="cuda",
                       name="NVIDIA H100 80GB HBM3")
    built = matrix.build([("results/cuda.json", gpu)])
    assert built["runs"][0]["device"] == "cuda (NVIDIA H100 80GB HBM3)"
    assert built["lanes"][0]["provenance"]["devices"] == ["cuda (NVIDIA H100 80GB HBM3)"]
    assert "| cuda | ran | results/cuda.json | cuda (NVIDIA H100 80GB HBM3) |" in markdown(built)


# -- declined models ---------------------------------------------------------------------------


def declining_inputs():
    why = "load_model raised OSError: <no> \"weights\" | here"
    mlm = {"model": "bert-tiny", "family": "bert", "role": "mlm", "reason": why}
    other = {"model": "mystery", "family": None, "role": None,
             "reason": "can_handle() returned False"}
    first = lane_results(records=[record(adapter="pytest-invarlock:hf_causal")],
                         adapters=[adapter("pytest-invarlock:hf_causal", [mlm, other])],
                         status="ran")
    second = copy.deepcopy(first)  # the same declines from a second machine: listed once
    second["provenance"]["commit"] = "b" * 40
    return [("results/cpu.json", first), ("results/cpu-2.json", second)], why


def test_declined_models_are_gathered_deduplicated_and_sorted():
    inputs, why = declining_inputs()
    built = matrix.build(inputs)
    assert validate(built, "support_matrix") == []
    assert built["declined"] == [
        {"adapter": "pytest-invarlock:hf_causal", "model": "mystery", "family": None,
         "role": None, "runtime": "cpu", "reason": "can_handle() returned False"},
        {"adapter": "pytest-invarlock:hf_causal", "model": "bert-tiny", "family": "bert",
         "role": "mlm", "runtime": "cpu", "reason": why}]
    (lane,) = built["lanes"]
    assert lane["lane_id"] == "gpt2-causal-hf-cpu-pytest-invarlock:hf_causal"
    assert lane["adapter"] == "pytest-invarlock:hf_causal"


def test_grid_cells_tell_declined_from_not_run_and_never_show_a_bare_dash():
    inputs, _ = declining_inputs()
    inputs.append(("results/other.json", lane_results(records=[
        record(adapter="hf_bert", model="bert-tiny", family="bert", role="mlm")])))
    built = matrix.build(inputs)
    adapters, rows = _grid(built, "cpu")
    assert adapters == ["hf_bert", "pytest-invarlock:hf_causal"]
    cells = {(row[0].text, a): cell.text for row in rows for a, cell in zip(adapters, row[1:],
                                                                             strict=True)}
    assert cells == {("bert", "hf_bert"): "experimental",
                     ("bert", "pytest-invarlock:hf_causal"): DECLINED,
                     ("gpt2", "hf_bert"): NOT_RUN,
                     ("gpt2", "pytest-invarlock:hf_causal"): "experimental"}
    md = markdown(built)
    grid = md.split("## Families x adapters, runtime `cpu`")[1].split("## Declined models")[0]
    assert "| bert | experimental | n/a (declined) |" in grid
    assert "| gpt2 | not run | experimental |" in grid
    assert " - " not in grid.replace("\n", " ")
    declined = md.split("## Declined models")[1].split("## Every lane")[0]
    assert ("- `pytest-invarlock:hf_causal` declined `bert-tiny` (family `bert`, role `mlm`, "
            "runtime `cpu`): load_model raised OSError: <no> \"weights\" | here") in declined
    assert "`mystery` (family `unknown`" in declined


def test_html_shows_declines_escaped_with_the_reason_on_hover():
    inputs, _ = declining_inputs()
    page = html(matrix.build(inputs))
    HTMLParser().feed(page)
    assert "<script" not in page and "http" not in page.split("</style>")[1]
    assert ('<td class="declined" title="pytest-invarlock:hf_causal declined bert-tiny: '
            'load_model raised OSError: &lt;no&gt; &quot;weights&quot; | here">n/a (declined)'
            "</td>") in page
    assert "<h2>Declined models</h2>" in page
    assert "<td>load_model raised OSError: &lt;no&gt; &quot;weights&quot; | here</td>" in page
    assert "<no>" not in page


def test_docs_say_when_nothing_was_declined():
    built = matrix.build([("a.json", lane_results(records=[record()]))])
    assert built["declined"] == []
    assert "No adapter declined a bundled model." in markdown(built)
    assert "No adapter declined a bundled model." in html(built)


# -- determinism and path spelling -------------------------------------------------------------


def test_any_input_order_gives_identical_output_with_runs_and_declines():
    inputs, _ = declining_inputs()
    inputs += [("results/cuda.json", not_run_cuda()), ("results/x.json", cpu_ran())]
    texts = set()
    for _ in range(6):
        random.shuffle(inputs)
        built = matrix.build(inputs)
        texts.add(matrix.render(built) + markdown(built) + html(built))
    assert len(texts) == 1


def test_the_spelling_of_a_results_path_does_not_matter(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "cpu.json").write_text(json.dumps(cpu_ran()))
    (tmp_path / "results" / "cuda.json").write_text(json.dumps(not_run_cuda()))
    monkeypatch.chdir(tmp_path)
    spellings = [
        [str(tmp_path / "results" / "cpu.json"), str(tmp_path / "results" / "cuda.json")],
        ["./results/../results/cpu.json", "results/./cuda.json"],
        ["results/cpu.json", "results/cuda.json"],
        ["results/cuda.json", "results/cpu.json", "./results/cpu.json"],  # named twice: once
    ]
    outputs = set()
    for i, files in enumerate(spellings):
        out = tmp_path / f"out{i}"
        assert matrix.main([*files, "--output", str(out / "m.json"), "--docs", str(out)]) == 0
        outputs.add(tuple((out / n).read_bytes() for n in
                          ("m.json", "support-matrix.md", "support-matrix.html")))
    assert len(outputs) == 1
    built = json.loads(outputs.pop()[0])
    assert [r["source"] for r in built["runs"]] == ["results/cpu.json", "results/cuda.json"]
    assert built["lanes"][0]["provenance_source"] == "results/cpu.json"
    assert built["lanes"][0]["evidence"]["counts"] == {"passed": 2}
    # written with one spelling, checked with another
    assert matrix.main([spellings[0][0], spellings[0][1], "--output", "out2/m.json",
                        "--docs", "out2", "--check"]) == 0


def test_source_names_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "a" / "results").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    assert matrix.source_name(tmp_path / "a" / "results" / "cpu.json") == "results/cpu.json"
    assert matrix.source_name(tmp_path / "b.json") == "../b.json"


# -- --check names changed runs and declines --------------------------------------------------


def test_check_names_changed_runs_and_declines(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "cpu.json").write_text(json.dumps(cpu_ran()))
    assert matrix.main(["results/cpu.json", "--output", "m.json"]) == 0
    (tmp_path / "results" / "cuda.json").write_text(json.dumps(not_run_cuda()))
    less = cpu_ran()
    less["adapters"][0]["declined"] = []
    (tmp_path / "results" / "cpu.json").write_text(json.dumps(less))
    capsys.readouterr()
    assert matrix.main(["results/cpu.json", "results/cuda.json", "--output", "m.json",
                        "--check"]) == 1
    out = capsys.readouterr().out
    assert "run results/cuda.json: missing from the committed file" in out
    assert "declined hf_causal on bert-tiny (cpu): only in the committed file" in out


def test_changed_lanes_names_fields_of_runs_and_top_level_changes():
    old = matrix.build([("results/cpu.json", cpu_ran())])
    new = copy.deepcopy(old)
    new["runs"][0]["commit"] = "f" * 40
    new["tier_rules"] = [*new["tier_rules"], "another rule"]
    assert matrix.changed_lanes(old, new) == [
        "tier_rules: differs between the committed file and the evidence",
        f"run results/cpu.json: commit is {'a' * 40!r} in the committed file, {'f' * 40!r} "
        "from the evidence"]
    assert matrix.changed_lanes(old, old) == []


def test_a_runtime_of_many_adapters_lists_its_cells_instead_of_a_grid():
    """One adapter per family (TransformerLens: one per architecture): a list, not a sparse grid."""
    from pytest_invarlock.matrix_docs import GRID_MAX

    n = GRID_MAX + 2
    records = [record(adapter=f"adapter{i:02d}", model="gpt2", family=f"family{i:02d}")
               for i in range(n)]
    built = matrix.build([("results/cpu.json", lane_results(
        records=records, adapters=[adapter(f"adapter{i:02d}") for i in range(n)]))])
    md = markdown(built)
    assert "## Families x adapters, runtime `cpu`" not in md
    listed = md.split("## Families and their adapters, runtime `cpu`")[1].split("## Declined")[0]
    assert "| family | adapter | evidence |" in listed
    assert listed.count("| experimental |") == n  # one row per (family, adapter), no "not run"
    assert f"| {NOT_RUN} |" not in listed
    assert "Families &times; adapters" not in html(built)
