"""The HTML report: one self-contained page of what a library knows (``adaptforge report``).

Layout: :mod:`~adaptforge.report.model` (the input: catalog records and metric rows, file sizes, benchmark
tables), :mod:`~adaptforge.report.views` (what each section shows, every value keeping its catalog row),
:mod:`~adaptforge.report.sections` and :mod:`~adaptforge.report.page` (HTML), :mod:`~adaptforge.report.charts`
(matplotlib to inline SVG), :mod:`~adaptforge.report.lineage` (the lineage graph),
:mod:`~adaptforge.report.bench` (benchmark result files). Gathering from the library and writing the file
is :mod:`adaptforge.pipelines.report`. Nothing here imports torch or reaches the network.
"""

from adaptforge.report.bench import read_bench
from adaptforge.report.model import BenchView, FileInfo, ReportInput
from adaptforge.report.page import render

__all__ = ["BenchView", "FileInfo", "ReportInput", "read_bench", "render"]
