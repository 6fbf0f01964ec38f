"""tools/profile_parts.py: self times of nested trace spans and the model-part rules."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _parts():
    spec = importlib.util.spec_from_file_location("profile_parts", REPO / "tools" / "profile_parts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ev(name, ts, dur, tid=1):
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def test_self_times_subtract_nested_children_per_thread():
    pp = _parts()
    trace = {"traceEvents": [
        _ev("ThunkExecutor::Execute", 0, 100),  # a runtime span: ignored, not a parent
        _ev("while.1", 0, 50), _ev("cond.2", 10, 30), _ev("ynn_fusion.3", 12, 20),
        _ev("fusion.4", 60, 10),
        _ev("ynn_fusion.3", 0, 7, tid=2),  # another thread: no parent there
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1},
    ]}
    st = pp.self_times(trace)
    assert st == {"while.1": 20, "cond.2": 10, "ynn_fusion.3": 27, "fusion.4": 10}


def test_op_names_and_parts():
    pp = _parts()
    hlo = (
        '  %ynn_fusion.1 = f32[2,3]{1,0} fusion(%a), kind=kCustom, calls=%c, '
        'metadata={op_name="jit(step)/transpose(jvp(jit(_run)))/Qwen/layers/mlp/mlp/up/BTD,BTF->DF/dot_general"}\n'
        '  ROOT %ynn_fusion.2 = f32[2,3]{1,0} fusion(%a), metadata={op_name="jit(step)/jvp(BTD,DV->BTV)/dot_general"}\n'
        '  %fusion.3 = f32[2] fusion(%b), metadata={op_name="jit(step)/Qwen/layers/attn/attn/attention/exp"}\n'
        '  %fusion.4 = f32[2] fusion(%b), metadata={op_name="jit(step)/Qwen/layers/attn/attn_norm/mul"}\n')
    names = pp.op_names(hlo)
    parts = {n: pp.our_part(n, names[n]) for n in names}
    assert parts == {"ynn_fusion.1": "decoder weight matmuls", "ynn_fusion.2": "lm-head matmuls",
                     "fusion.3": "attention", "fusion.4": "everything else"}
    assert pp.torch_part("aten::mm", [[768, 512], [512, 16384]], 16384) == "lm-head matmuls"
    assert pp.torch_part("aten::addmm", [[512], [1024, 512], [512, 512]], 16384) == \
        "decoder weight matmuls"
    assert pp.torch_part("aten::_scaled_dot_product_flash_attention_for_cpu", [], 16384) == \
        "attention"
    assert pp.torch_part("aten::mul", [[4, 4]], 16384) == "everything else"
