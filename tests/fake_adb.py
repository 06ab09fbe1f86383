"""A stand-in for `adb` used by tests/test_android.py (no device, no binary).

It appends each argv it receives as a JSON line to $FAKE_ADB_LOG, and answers:
- `devices`: "List of devices attached" and the lines in $FAKE_ADB_DEVICES
  (default one ready emulator);
- `push SRC DST`: fails like adb when SRC does not exist;
- `shell ... --graph=...`: replays a benchmark_model output file, the one in
  $FAKE_ADB_PROFILE_OUTPUT when --enable_op_profiling=true is passed, else the one in
  $FAKE_ADB_OUTPUT;
- any command containing $FAKE_ADB_FAIL_ON: exits 1 with an adb-style error.
"""

import json
import os
import sys


def main(args):
    with open(os.environ["FAKE_ADB_LOG"], "a") as log:
        log.write(json.dumps(args) + "\n")
    fail_on = os.environ.get("FAKE_ADB_FAIL_ON")
    if fail_on and fail_on in " ".join(args):
        print("adb: error: failed to run command: device offline", file=sys.stderr)
        sys.exit(1)
    if args[:2] == ["-s", args[1] if len(args) > 1 else ""]:
        args = args[2:]
    if args[0] == "devices":
        print("List of devices attached")
        print(os.environ.get("FAKE_ADB_DEVICES", "emulator-5554\tdevice").replace("\\n", "\n").replace("\\t", "\t"))
    elif args[0] == "push":
        if not os.path.exists(args[1]):
            print(f"adb: error: cannot stat '{args[1]}': No such file or directory", file=sys.stderr)
            sys.exit(1)
        print(f"{args[1]}: 1 file pushed, 0 skipped.")
    elif args[0] == "shell" and "--graph=" in " ".join(args):
        key = ("FAKE_ADB_PROFILE_OUTPUT" if "--enable_op_profiling=true" in " ".join(args)
               else "FAKE_ADB_OUTPUT")
        with open(os.environ[key]) as f:
            sys.stdout.write(f.read())


if __name__ == "__main__":
    main(sys.argv[1:])
