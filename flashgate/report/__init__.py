"""The battle report of an event: its figures put together (build.py), in words of
both languages (words.py), as a page (page.py, rendered by the gateway) and as a share
image (share.py, drawn by ``flashgate report``)."""
