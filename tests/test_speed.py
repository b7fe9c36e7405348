"""Start-up and compilation: the persistent compile cache, stored programs, commands that must
not import JAX, and process-parallel generation from a process that runs JAX."""
import json
import os
import subprocess
import sys
from pathlib import Path

from astra_jax.compilation import compile_cache_dir
from data_gen.readers import load_traces, write_traces
from data_gen.sim.generate import GenConfig, generate

ROOT = Path(__file__).resolve().parent.parent


def astra(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "astra_cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_compile_cache_folder_from_the_environment(tmp_path):
    assert compile_cache_dir({"ASTRA_COMPILE_CACHE": str(tmp_path)}) == tmp_path
    assert compile_cache_dir({"ASTRA_COMPILE_CACHE": "off"}) is None
    assert compile_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/astra-jax/programs")
    assert compile_cache_dir({}) == Path.home() / ".cache" / "astra-jax" / "programs"


def test_a_second_run_of_the_same_shapes_compiles_nothing(tmp_path):
    traces = [t for r in generate(GenConfig(n_tasks=6, seed=3, max_tools=3, workers=1))
              for t in r.traces]
    write_traces(traces, tmp_path / "tr.jsonl")
    env = dict(os.environ, ASTRA_COMPILE_CACHE=str(tmp_path / "xla"))
    logs = []
    for run in ("first", "second"):
        p = astra(["train", str(tmp_path / "tr.jsonl"), "--out", str(tmp_path / run),
                   "--epochs", "1", "--batch-size", "4", "--d-model", "16",
                   "--set", "model.spatial_layers=1", "--set", "model.temporal_layers=1"], env)
        assert p.returncode == 0, p.stderr
        logs.append(json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1]))
    assert logs[0]["xla_compiled"] >= 2 and logs[0]["xla_cache_hits"] == 0
    assert logs[1]["xla_compiled"] == 0 and logs[1]["xla_cache_hits"] == logs[0]["xla_compiled"]
    assert logs[1]["train_loss"] == logs[0]["train_loss"]
    # the stored train and eval steps were loaded, not traced again
    assert logs[0]["compiles"]["train"] >= 1 and logs[1]["compiles"] == {"train": 0, "eval": 0}
    assert "compiled 0 XLA programs and loaded" in p.stdout
    off = astra(["train", str(tmp_path / "tr.jsonl"), "--out", str(tmp_path / "off"),
                 "--epochs", "1", "--batch-size", "4", "--d-model", "16",
                 "--set", "model.spatial_layers=1", "--set", "model.temporal_layers=1"],
                dict(env, ASTRA_COMPILE_CACHE="off"))
    assert "loaded 0 from the compile cache" in off.stdout


def test_trace_commands_do_not_import_jax():
    code = ("import sys; from astra_cli.main import main; "
            "rc = main(['traces', 'stats', 'data/who_and_when/Algorithm-Generated/1.json']); "
            "assert rc == 0 and 'jax' not in sys.modules, sorted(sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr


def test_gen_with_workers_from_a_process_running_jax(tmp_path):
    out = tmp_path / "sim.jsonl"
    code = ("import jax.numpy as jnp; jnp.ones(3).sum().block_until_ready(); "
            "from astra_cli.main import main; "
            f"raise SystemExit(main(['gen', '--tasks', '64', '--max-tools', '3', '--seed', '5', "
            f"'--workers', '2', '--out', {str(out)!r}]))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "os.fork()" not in p.stderr  # JAX warns when a process running it forks
    serial = [t.trace_id for r in generate(GenConfig(n_tasks=64, seed=5, max_tools=3, workers=1))
              for t in r.traces]
    assert [t.trace_id for t in load_traces(out).traces] == serial


STORE_CHECK = """
import sys
import jax.numpy as jnp, numpy as np
from pathlib import Path
from astra_jax import compilation
from astra_jax.compilation import StoredJit, compile_stats
compilation.enable_compile_cache(None)  # JAX's own cache off: only the store can serve
compilation._program_dir = Path(sys.argv[1])
traced = []

def fn():  # a new function each time, as in a new process: JAX's own caches cannot help
    def f(x, scale):
        traced.append(x.shape)
        return {"y": jnp.tanh(x) * scale["s"]}
    return f

x, scale = np.arange(6, dtype=np.float32).reshape(2, 3), {"s": np.float32(2.0)}
want = StoredJit(fn(), "v1")(x, scale)["y"]
assert len(traced) == 1 and len(list(compilation._program_dir.glob("*.program"))) == 1
before = compile_stats()
got = StoredJit(fn(), "v1")(x, scale)["y"]
assert len(traced) == 1, "loaded from disk: never traced"
assert compile_stats().since(before).cache_hits == 1
np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
StoredJit(fn(), "v2")(x, scale)  # other code or settings: never the stored program
StoredJit(fn(), "v1")(np.ones((4, 3), np.float32), scale)  # other shapes: compiled
assert traced == [(2, 3), (2, 3), (4, 3)], traced
assert len(list(compilation._program_dir.glob("*.program"))) == 3
for f in compilation._program_dir.glob("*.program"):  # torn files: compiled again, replaced
    f.write_bytes(f.read_bytes()[:100])
np.testing.assert_array_equal(np.asarray(StoredJit(fn(), "v1")(x, scale)["y"]), np.asarray(want))
assert len(traced) == 4
StoredJit(fn(), "v1")(x, scale)
assert len(traced) == 4
"""


def test_stored_programs_load_without_tracing_and_only_under_their_key(tmp_path):
    # in a process of its own: JAX's persistent cache, which another test may have turned on in
    # this one, serves programs that must then not be stored
    p = subprocess.run([sys.executable, "-c", STORE_CHECK, str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
