"""A legacy agent script: the task arrives as JSON on stdin, the answer leaves on stdout."""

import json
import sys

task = json.load(sys.stdin)
print(json.dumps({"output": task["title"].upper(), "usage": {"input_tokens": 0, "output_tokens": 0}}))
