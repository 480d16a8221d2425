"""On a host: use the config file CONFIG to reach Redis and the object store. Prints JSON with the error, if any."""
import json
import sys

from cluster import Workspace
from cluster.errors import ClusterError

try:
    ws = Workspace.from_config(sys.argv[1])
    ws.redis.ping()
    ws.get_default_datastore().list("")
    print(json.dumps({"error": None}))
except ClusterError as e:
    print(json.dumps({"error": type(e).__name__, "bases": [c.__name__ for c in type(e).__mro__],
                      "message": e.message, "hint": e.hint}))
