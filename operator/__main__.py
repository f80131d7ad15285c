"""`python -m shm_operator [kopf run options]`: run the operator (e.g. `--all-namespaces` or `-n NS`,
`--liveness=http://0.0.0.0:8080/healthz`)."""
import sys

from kopf.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--standalone", "-m", "shm_operator.handlers", *sys.argv[1:]]))
