"""napari plugin of the emseg bundle: open its stacks and outputs, segment a layer with the bundle's own inference,
and look at, correct and export the cells with their table.

Contributions (``napari.yaml``): a reader (:mod:`.reader`), two dock widgets (:mod:`.widgets`), the shipped
ISBI 2012 sections as sample data (:mod:`.sample_data`). The work is plain functions on arrays:
:mod:`.bundle` (``run inferring``, one block at a time), :mod:`.proofreading` (merge, split, the rows they change)
and :mod:`.writer` (the corrected cells and table).
"""

from importlib.metadata import version

__all__ = ["__version__"]

__version__ = version("emseg")
