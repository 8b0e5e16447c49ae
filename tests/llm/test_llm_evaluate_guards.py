"""llm_track.evaluate: duplicate runs refused, judge key only where asked, bad numbers refused."""

import io
import json
import os
import urllib.request

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from llm_track import evaluate  # noqa: E402
from llm_track.config import LLMTrackError, preset_config  # noqa: E402
from llm_track.run import run_protocol  # noqa: E402

torch.set_num_threads(1)
PROG = "llm_track.evaluate"
SECRET = "sk-test-secret-123"


def test_duplicate_agent_seed_refused(tmp_path, capsys, one_line_error):
    cfg = preset_config("tiny", agent="naive", steps=1, candidates=2)
    a = run_protocol(cfg, str(tmp_path / "a"), progress=False)
    b = run_protocol(cfg, str(tmp_path / "b"), progress=False)
    out = tmp_path / "LLM.md"
    code = evaluate.main(["--runs", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert code == 2
    one_line_error(PROG, a, b, "naive", "seed 0")
    assert not out.exists()
    assert not os.path.exists(os.path.join(a, "eval.json"))
    # The same folder reached through two roots is one run, not a duplicate.
    assert evaluate.find_runs([str(tmp_path / "a"), str(tmp_path / "a" / "naive")]) == [a]


# --------------------------------------------------------------------------- judge and its key
class _FakeNet:
    """Stands in for the network: records each request, answers "A"."""

    def __init__(self):
        self.requests = []

    def open(self, req, *args, **kwargs):
        if isinstance(req, str):
            req = urllib.request.Request(req)
        self.requests.append(req)
        body = {"choices": [{"message": {"content": "A"}}]}
        return io.BytesIO(json.dumps(body).encode())


@pytest.fixture
def net(monkeypatch):
    fake = _FakeNet()
    monkeypatch.setattr(
        urllib.request.OpenerDirector, "open", lambda self, req, *a, **k: fake.open(req)
    )
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    return fake


@pytest.fixture
def judged(monkeypatch, tmp_path):
    """main() up to the evaluation, which is replaced by one call of the judge."""
    calls = []

    def fake_evaluate(roots, out, n_prompts, max_new, device, judge, *questions):
        calls.append(judge("q", "a", "b") if judge else None)
        return {"meta": {"n_runs": 0}}

    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    (tmp_path / "runs").mkdir()
    return lambda *extra: evaluate.main(
        ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "o.md"), *extra]
    )


def _auth(req):
    return req.get_header("Authorization")


def test_judge_key_not_sent_by_default(net, judged):
    assert judged("--judge-url", "http://judge.example/v1") == 0
    (req,) = net.requests
    assert req.full_url == "http://judge.example/v1/chat/completions"
    assert _auth(req) is None
    assert all(SECRET not in str(v) for v in req.header_items())

    assert judged("--judge-url", "https://judge.example/v1") == 0
    assert _auth(net.requests[-1]) is None


def test_judge_key_over_http_refused_without_flag(net, judged, capsys, one_line_error):
    url = "http://judge.example/v1"
    assert judged("--judge-url", url, "--judge-key-env", "MY_JUDGE_KEY") == 2
    err = one_line_error(PROG, "--judge-url", "http", "--judge-allow-http")
    assert SECRET not in err
    assert net.requests == []

    assert judged("--judge-url", url, "--judge-key-env", "MY_JUDGE_KEY", "--judge-allow-http") == 0
    (req,) = net.requests
    assert req.full_url == url + "/chat/completions" and _auth(req) == f"Bearer {SECRET}"


def test_judge_key_over_https_to_named_url_only(net, judged, capsys, one_line_error):
    url = "https://judge.example/v1"
    assert judged("--judge-url", url, "--judge-key-env", "MY_JUDGE_KEY") == 0
    (req,) = net.requests
    assert req.full_url == url + "/chat/completions" and _auth(req) == f"Bearer {SECRET}"

    # Named but unset variable, or a key without a judge: one-line errors.
    assert judged("--judge-url", url, "--judge-key-env", "NO_SUCH_VARIABLE_XYZ") == 2
    one_line_error(PROG, "NO_SUCH_VARIABLE_XYZ")
    assert judged("--judge-key-env", "MY_JUDGE_KEY") == 2
    one_line_error(PROG, "--judge-url")
    assert judged("--judge-url", "ftp://judge.example/v1") == 2
    one_line_error(PROG, "--judge-url")


def test_judge_function_guards_key(net):
    with pytest.raises(LLMTrackError, match="http"):
        evaluate.make_judge("http://judge.example/v1", "m", SECRET)
    assert net.requests == []
    assert evaluate.make_judge("https://judge.example/v1", "m", SECRET)("q", "a", "b") == 1


def test_judge_redirects_not_followed(monkeypatch):
    """urllib resends headers (the key) to a redirect's target: the judge's opener refuses."""
    req = urllib.request.Request(
        "https://judge.example/v1/chat/completions", headers={"Authorization": "Bearer x"}
    )
    with pytest.raises(OSError, match="redirect"):
        evaluate._NoRedirect().redirect_request(req, None, 302, "Found", {}, "http://evil.example/")
    handlers = []
    monkeypatch.setattr(
        urllib.request,
        "build_opener",
        lambda *h: handlers.extend(h) or (_ for _ in ()).throw(OSError("offline")),
    )
    with pytest.raises(LLMTrackError, match="no usable answer"):
        evaluate.make_judge("https://judge.example/v1", "m", "k")("q", "a", "b")
    assert evaluate._NoRedirect in handlers


# --------------------------------------------------------------------------- bad numbers
@pytest.mark.parametrize("name", ["--prompts", "--max-new-tokens"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_numbers_before_compute(tmp_path, name, value, one_line_error, refuse):
    refuse("llm_track.evaluate.find_runs")
    (tmp_path / "runs").mkdir()
    assert evaluate.main(["--runs", str(tmp_path / "runs"), name, value]) == 2
    one_line_error(PROG, name, ">= 1")
