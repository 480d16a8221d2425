"""On the client host: submit COUNT runs of a ticker script (SECONDS long) to POOL. Prints JSON.

The script logs a metric each second and, at the end, writes outputs/done.txt with a token it also prints at
its start: a run's outputs and its log must come from the same attempt."""
import json
import sys
import textwrap
from pathlib import Path

from cluster import Experiment, ScriptRunConfig, Workspace

pool, experiment, seconds, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
source = Path("ticker")
source.mkdir(exist_ok=True)
(source / "tick.py").write_text(textwrap.dedent(f"""
    import os, time, uuid
    from cluster import Run
    run = Run.get_context()
    token = uuid.uuid4().hex
    print("token", token, flush=True)
    for i in range({seconds}):
        run.log("tick", i)
        time.sleep(1)
    os.makedirs("outputs", exist_ok=True)
    with open("outputs/done.txt", "w") as f:
        f.write(token)
    print("done", token, flush=True)
"""))
ws = Workspace.from_config()
exp = Experiment(workspace=ws, name=experiment)
runs = [exp.submit(ScriptRunConfig(source_directory=str(source), script="tick.py", compute_target=pool))
        for _ in range(count)]
print(json.dumps({"experiment": experiment, "runs": [r.id for r in runs]}))
