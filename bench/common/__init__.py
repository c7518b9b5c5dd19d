"""What the benchmark harnesses in bench/ share: reading /proc, running server processes, result files, docs sections.

Each harness (bench/pod, bench/router, bench/autoscale) is run as a script
from the repository root and puts the root on sys.path to import this
package. Nothing here knows about one harness's servers, load or numbers;
that stays in the harness's own folder.
"""
