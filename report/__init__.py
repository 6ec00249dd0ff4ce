"""The report of one or several grid roots, made from the cells' result files alone (no
TensorFlow):

  cells, notes = load_cells(["workdirs/grid_shapes", "/mnt/other_machine/grid_shapes"])
  paths = write_report(cells, "workdirs/grid_shapes/report")
  print(summary_text(cells))

  cells.py    the cells of the roots, from their result files
  tables.py   layer columns in depth order, the tables, the gain over the random-init baseline
  outputs.py  report.md, report.csv, report.json, the plots, the summary

Writes report.md (a table per evaluation and architecture family: rows = cells, columns = layers
in depth order, the best layer in bold), report.csv (one row per cell and layer), report.json
(the same numbers, nested) and one PNG plot of top-1 accuracy against layer depth per table.
"""

from report.cells import CellResult, evaluation_title, load_cells, load_failures
from report.outputs import make_report, summary_text, write_report
from report.tables import best_over_baseline, group_tables, layer_columns

__all__ = ["CellResult", "best_over_baseline", "evaluation_title", "group_tables",
           "layer_columns", "load_cells", "load_failures", "make_report", "summary_text",
           "write_report"]
