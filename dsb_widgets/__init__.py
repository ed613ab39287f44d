"""dsb_widgets: watch neural networks learn the statistics of their data in order of complexity.

Data flows one way: ``data`` -> statistics (``stats``, ``ngrams``) -> probes (``gaussian_ot``,
``quantile``, ``maxent``, clones) -> training ``engine`` -> results (xarray) -> views
(notebooks, ``ui``). Math modules never import the UI.
"""

__version__ = "0.1.0"
