"""dflows explorer: a desktop app to paint a target, train a discrete flow and watch it learn.

Start it with ``dflows-explorer`` or ``python -m explorer``; see ``explorer.app.main``.
"""
