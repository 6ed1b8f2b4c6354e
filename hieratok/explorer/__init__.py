"""HieraTok Explorer, the Gradio app: `python -m hieratok.explorer --assets PATH` (needs the `app` extra).

`models` loads the checkpoints a folder holds (tokenizers, DiTs, classifier, latent map per model family),
`views` turns them into what each tab shows, `ui` lays out the Gradio Blocks, `cli` is the command line (it
checks its arguments before Gradio is imported), `server` runs the app in a background process (benchmarks,
screenshots, tests).
"""
