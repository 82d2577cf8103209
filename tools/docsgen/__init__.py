"""Build-time generators of the documentation site (loaded by the MkDocs hook ``hooks.py``).

Nothing about a loss is written by hand in ``docs/``: the catalogue pages, the comparison table,
the plots and the API reference pages are generated from ``fastloss.REGISTRY`` and the public
modules every time the site is built, so the docs follow the code as losses and modules land.

* :mod:`.catalogue`  the loss catalogue (Markdown) from the registry;
* :mod:`.plots`      each loss and its gradient, plotted with the package itself (matplotlib, Agg);
* :mod:`.apiref`     API reference pages from the public modules' ``__all__``, and the check that
                     every public symbol is documented;
* :mod:`.site`       the navigation and Markdown rewriting the hook applies, formulas as MathML;
* :mod:`.generated`  the copy of the generated pages committed under ``docs/`` (links work in the
                     repository too): ``python tools/docsgen/generated.py`` refreshes it;
* ``hooks.py``       the MkDocs hook wiring them in (``hooks:`` in ``mkdocs.yml``).
"""
