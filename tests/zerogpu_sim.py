"""The app's GPU callbacks under the real `spaces` ZeroGPU wrappers, on a CPU (run by tests/test_gpu.py in a
process of its own: it switches ZeroGPU on and patches the `spaces` client).

ZeroGPU's own code runs: `spaces.GPU` decorates, its handler calls the duration callable, forks a worker
process, pickles the job into it and the results back (its SimpleQueue), and raises its own refusals. Only
what needs Hugging Face's device API or a CUDA build of torch is replaced: the scheduler (`client.schedule`
grants at once, or refuses like the real one), `client.allow` / `client.release`, and `spaces.zero.torch`
(the package's own fallbacks for a torch without CUDA). The callbacks are called directly, then served
(Gradio's queue passes its own gr.Request and gr.Progress) through gradio_client. Prints one JSON object.
"""
import json
import os
import sys
import types

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["SDVAR_CACHE_DIR"] = "off"

import spaces  # noqa: E402  (before torch, as on a Space)
from spaces.config import Config  # noqa: E402

Config.zero_gpu = True
stub = types.ModuleType("spaces.zero.torch")   # what spaces.zero.torch is where torch has no CUDA
for name in ("enter_mode", "patch", "unpatch", "init", "move"):
    setattr(stub, name, lambda *a, **k: None)
for name in ("pack", "size"):
    setattr(stub, name, lambda *a, **k: 0)
stub.is_in_bad_fork = lambda *a, **k: False
sys.modules["spaces.zero.torch"] = stub

from spaces.zero import client  # noqa: E402
from spaces.zero.api import ScheduleResponse  # noqa: E402
from spaces.zero.gradio import error as zerogpu_error  # noqa: E402

asked, refuse = [], []


def schedule(task_id, request=None, duration=None, gpu_size=None, **_):
    asked.append(duration.total_seconds())
    if refuse:
        raise zerogpu_error("ZeroGPU quota exceeded", refuse[0])
    return ScheduleResponse(idle=True, nvidiaIndex=0, nvidiaUUID="cpu", allowToken="token")   # workers reused


client.schedule = schedule
client.allow = lambda *a, **k: None
client.release = lambda *a, **k: None

import gradio as gr  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import app  # noqa: E402
from conftest import build_random_pair  # noqa: E402
from sdvar_core.explore import DEFAULT_INPUTS  # noqa: E402
from ui.common import View  # noqa: E402

import ui.generate_tab  # noqa: E402

stream_click = ui.generate_tab.stream_click


def stream_click_noting_pid(*args, **kwargs):   # the process the runs were made in, carried back in the trace
    for update in stream_click(*args, **kwargs):
        if update.runs and "main" in update.runs:
            update.runs["main"].settings["pid"] = os.getpid()
        yield update


ui.generate_tab.stream_click = stream_click_noting_pid
pair = build_random_pair("zerogpu-sim")
demo = app.build_demo(pair_loader=lambda key, precision="fp32": pair, examples_dir=None)
fns = {f.api_name: f.fn for f in demo.fns.values() if f.api_name}
view = next(a for a in fns["generate"].__wrapped__.args if isinstance(a, View))
out = {}

inputs = dict(DEFAULT_INPUTS, class_name=pair.class_names[3], mode="speculative")
*_, result = fns["generate"](gr.Request(session_hash="sim"), model="tiny", **inputs)   # the last: every output
components = [v for v in vars(view).values() if isinstance(v, gr.blocks.Block)]
out["generate_keys_are_the_views_components"] = all(any(k is c for c in components) for k in result)
out["generate_image_shape"] = list(result[view.final_image].shape)
out["generate_ran_in_pid"] = result[view.last_run].settings["pid"]
out["this_pid"] = os.getpid()
out["asked_generate"] = asked[-1]

rows = list(fns["sweep"](gr.Request(session_hash="sim"), model="tiny", sweep_kind="schedule", sweep_seeds="0",
                         sweep_classes="chosen", sweep_entries=["4"], sweep_dirs=["D→T"], sweep_masks=["1"],
                         sweep_gammas=["1"], sweep_taus=["1.0"], class_name=pair.class_names[0], class_id=0,
                         cfg=1.5, top_k=0, top_p=1.0, accept="prob", lenience=1.0, precision="fp32"))
out["sweep_yields"] = len(rows)
out["sweep_rows"] = int(len(rows[-1][view.last_sweep]))
out["asked_sweep"] = asked[-1]

# a bad input only the engine catches (in the worker) comes back as the same named message
try:
    list(fns["generate"](gr.Request(session_hash="sim"), model="tiny",
                         **{**inputs, "mode": "schedule", "schedule": "DDXTTTTTTT"}))
    out["worker_error"] = None
except gr.Error as e:
    out["worker_error"] = str(e.message)

# served: Gradio's own queue injects gr.Request and gr.Progress, which must cross into the worker too
from conftest import free_port  # noqa: E402
from gradio_client import Client  # noqa: E402

port = free_port()
app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
api = Client(f"http://127.0.0.1:{port}/", verbose=False)
served = api.predict(api_name="/generate", **{**inputs, "seed": 3})
out["served_generate_outputs"] = len(served)
out["served_generate_wall"] = served[3]
sweep_args = dict(model="tiny", sweep_kind="speculative", sweep_seeds="0, 1", sweep_classes="all",
                  sweep_entries=["4"], sweep_dirs=["D→T"], sweep_masks=["1"], sweep_gammas=["1", "2"],
                  sweep_taus=["1.0"], class_name=pair.class_names[0], class_id=0, cfg=1.5, top_k=0, top_p=1.0,
                  accept="prob", lenience=1.0, precision="fp32")
served_sweep = api.predict(api_name="/sweep", **sweep_args)
out["served_sweep_status"] = served_sweep[0]
out["asked_served"] = asked[-2:]
# Stop: the sweep runs in the worker, Stop is served here; its mark reaches the worker
import time  # noqa: E402

long_sweep = api.submit(api_name="/sweep", **{**sweep_args, "sweep_kind": "schedule", "sweep_seeds": "0",
                                                "sweep_entries": [str(e) for e in range(1, 10)],
                                                "sweep_dirs": ["D→T", "T→D"], "sweep_masks": ["0", "1", "2"]})
deadline = time.time() + 120
while not long_sweep.outputs() and time.time() < deadline:
    time.sleep(0.05)
t0 = time.perf_counter()
api.predict(api_name="/stop_sweep")
while not long_sweep.done() and time.perf_counter() - t0 < 60:
    time.sleep(0.02)
out["stop_s"] = time.perf_counter() - t0
out["stopped_status"] = long_sweep.outputs()[-1][0] if long_sweep.outputs() else None
out["inputs"] = {f.api_name: [c.elem_id for c in f.inputs] for f in demo.fns.values()
                 if f.api_name in ("generate", "mask_gallery", "sweep")}

refuse.append("You have exceeded your ZeroGPU quota (10s requested vs. 3s left). Try again in 0:05:00.")
try:
    list(fns["generate"](gr.Request(session_hash="sim"), model="tiny", **inputs))
    out["refusal"] = None
except gr.Error as e:
    out["refusal"] = str(e.message)
before = len(asked)
masks = fns["mask_view"](model="tiny", mask_rule=1, mask_entry=4, mask_full=False)
out["mask_view_after_refusal"] = view.mask_heatmap in masks
out["mask_view_asked_gpu"] = len(asked) > before
demo.close()
print(json.dumps(out, default=str))
