"""The online half: a FastAPI app that scores samples against the loaded banks."""
