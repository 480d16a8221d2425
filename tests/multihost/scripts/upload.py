"""On the client host: upload a folder to the default datastore (as the tutorial does). Prints JSON."""
import json
import sys

from cluster import Workspace

ws = Workspace.from_config()  # .cluster/config.json in this host's folder: the only config it has
ds = ws.get_default_datastore()
ds.upload(src_dir=sys.argv[1], target_path=sys.argv[2], overwrite=True, show_progress=False)
print(json.dumps({"uploaded": len(ds.list(sys.argv[2]))}))
