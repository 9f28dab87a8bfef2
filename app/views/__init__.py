"""One module per page of the app; each has ``render(entries)``, drawn by `interp.app.main`."""
