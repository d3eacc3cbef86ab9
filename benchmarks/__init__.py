"""Speed comparisons against the official DETR code, both sides in the same run (see README.md).

Run from the repository root: ``python -m benchmarks.<name> --help``. Not part of the installed
package ``detr_d2``.
"""
