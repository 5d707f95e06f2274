"""`python -m tfpar.server --cluster a:1,b:2 --index 1` serves one task of
a cluster (the code is `tfpar.cluster.server`)."""

from tfpar.cluster.server import main, serve, run

if __name__ == "__main__":
    run()
