"""Code reward: fraction of unit tests passed by the last ```python block (Eurus-2-RL / PRIME /
APPS test format), run in the sandbox. 0 on a missing block, a syntax error, or when all tests
together exceed the time budget."""

import json
import logging

from prorl_jax.errors import DataError
from prorl_jax.rewards import sandbox
from prorl_jax.rewards.base import Verdict
from prorl_jax.rewards.extract import final_text, last_python_block

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0


def parse_tests(ground_truth) -> dict:
    """Validate APPS-style tests: {"inputs": [...], "outputs": [...], "fn_name"?: str}.

    Args:
      ground_truth: the tests as a dict or its JSON string.

    Returns:
      The tests as a dict.

    Raises:
      DataError: malformed tests.
    """
    tests = ground_truth
    if isinstance(tests, str | bytes):
        try:
            tests = json.loads(tests)
        except ValueError as e:
            raise DataError(f"code ground truth is not valid JSON: {e}") from None
    if not isinstance(tests, dict):
        raise DataError(f"code ground truth must be a dict of tests, got {type(tests).__name__}")
    inputs, outputs = tests.get("inputs"), tests.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise DataError("code ground truth needs 'inputs' and 'outputs' lists")
    if len(inputs) != len(outputs) or not inputs:
        raise DataError(f"code ground truth has {len(inputs)} inputs and {len(outputs)} outputs; "
                        "need the same non-zero number")
    fn_name = tests.get("fn_name")
    if fn_name is not None and (not isinstance(fn_name, str) or not fn_name.isidentifier()):
        raise DataError(f"code ground truth fn_name {fn_name!r} is not a Python identifier")
    return {"inputs": inputs, "outputs": outputs, "fn_name": fn_name or None}


def _as_text(value) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def normalize_output(text: str) -> list[str]:
    """Lines with trailing whitespace removed and trailing blank lines dropped.

    Args:
      text: program output or expected output.

    Returns:
      The comparable list of lines.
    """
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _roundtrip(value):
    # Tuples in the tests (or results) became lists in JSON; compare in that form.
    return json.loads(json.dumps(value))


def _passed(test: dict, expected, call_based: bool) -> str | None:
    """None if the test passed, else a short reason."""
    if test.get("truncated"):
        return f"output too long ({test['status']})"
    if test["status"] != "ok":
        return test["status"]
    if not call_based:
        same = normalize_output(test["stdout"]) == normalize_output(_as_text(expected))
        return None if same else "wrong output"
    try:
        value = json.loads(test["value"])
    except ValueError:
        return "return value not JSON-serializable"
    expected = _roundtrip(expected)
    # APPS call-based outputs are often wrapped in a one-element list.
    return None if value == expected or [value] == expected else "wrong return value"


def score(completion: str, ground_truth, *, timeout_s: float = DEFAULT_TIMEOUT_S,
          limits: sandbox.SandboxLimits | None = None,
          layers: sandbox.Protections | None = None) -> Verdict:
    """Score a completion against the tests in `ground_truth`.

    Args:
      completion: model output; the program is the last ```python block after `</think>`.
      ground_truth: tests, see `parse_tests`.
      timeout_s: wall-clock budget for all tests together.
      limits: sandbox resource limits (None: SandboxLimits()).
      layers: sandbox protections to use (None: all this host supports; see sandbox.run_program).

    Returns:
      Verdict(fraction of tests passed, reason when not all passed).
    """
    tests = parse_tests(ground_truth)
    source = last_python_block(final_text(completion))
    if source is None:
        return Verdict(0.0, "no ```python block")
    try:
        compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return Verdict(0.0, f"syntax error: {type(e).__name__}: {e}"[:200])
    call_based = tests["fn_name"] is not None
    caps = [2 * len(json.dumps(out) if call_based else _as_text(out)) + 1024
            for out in tests["outputs"]]
    result = sandbox.run_program(source, tests["inputs"], fn_name=tests["fn_name"],
                                 timeout_s=timeout_s, output_caps=caps,
                                 limits=limits or sandbox.SandboxLimits(), layers=layers)
    if result.reason is not None:
        logger.info("code reward 0: %s", result.reason)
        return Verdict(0.0, result.reason)
    if any(t["status"] == "timeout" for t in result.tests):
        reason = f"tests exceeded the time budget of {timeout_s:g} s"
        logger.info("code reward 0: %s", reason)
        return Verdict(0.0, reason)
    failures = [(i, _passed(t, tests["outputs"][i], call_based)) for i, t in enumerate(result.tests)]
    failures = [(i, why) for i, why in failures if why is not None]
    n = len(tests["inputs"])
    passed = len(result.tests) - len(failures)
    if not failures:
        return Verdict(1.0)
    i, why = failures[0]
    detail = result.tests[i].get("stderr_tail", "").strip().splitlines()[-1:] or [""]
    reason = f"passed {passed}/{n} tests; test {i}: {why}" + (f" ({detail[0]})" if detail[0] else "")
    if passed == 0:
        logger.info("code reward 0: %s", reason)
    return Verdict(passed / n, reason[:300])
