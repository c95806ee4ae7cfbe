"""Face restoration: the optional stage after any pack's render (GFPGAN v1.3 / v1.4).

The network (``models/gfpgan.py``) restores a whole face aligned to a 512-px tile, but a
model worker sees only the pack's crops, and full frames never cross the object store.
So, per output frame:

1. The job sends the worker, besides the pack's inputs, the reference frame's aligned
   tile: cut once per reference frame along the face track and kept with the template as
   a JPEG (``job/tiles.py``), with the crop box and the frame → tile similarity
   (``RestoreInputs``).
2. The worker renders the pack's crop as always, pastes it into the tile through the
   crop → tile transform with the pack's own mask and paste mode (``stage.tile_with_crop``: the
   tile is then the unrestored output frame, aligned), restores the tiles in batches and
   samples each restored tile over the crop box on an R × R grid (``stage.restore_chunk``). R is
   the box's side in frame pixels, or in tile pixels where those are fewer
   (``restore_size``): the restored detail the output frame can show, no more. The faces go
   back as JPEG files (``Jpegs``, as the tiles came): an eighth to a tenth of their pixels'
   bytes, about one grey level off.
3. Compose pastes the pack's crop as always (the unrestored frame), then blends the
   restored face over it with the pack's mask, the tile's feathered border and
   ``--restore-blend`` (``face.align.restored_layer``, ``geometry.paste_i420``): pixels
   outside the pack's mask are the unrestored output's, bit for bit.

``inputs``: what crosses between the job and the worker (tiles, boxes, restored faces)
and what both sides do with it, without the network: the job imports it, and job tasks
never load PyTorch (nor does importing this package). ``stage``: the network's side (step 2,
on the worker).
"""
