"""The SDVAR Explorer app's tabs: one module per tab, with its layout (`build`), its event wiring
(`wire`) and module-level callbacks that return {component: value} dicts; `common` holds what
they share. The app itself (`app.py`) lays out the page and launches it.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported: no calls home
