"""One layout function per tab: each builds its components inside the open `gr.Blocks` and
returns them by name for emodemo.ui.app to wire."""
