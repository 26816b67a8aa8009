"""3D-only banks for unorganized 360-degree point clouds (Real3D-AD): reading clouds and their per-point
labels (:mod:`.io`), the dataset layout (:mod:`.data`), point-neighbourhood features (:mod:`.features`),
scoring one score per point and one per object (:mod:`.scorer`) and the metrics (:mod:`.metrics`).

A point bank is an ordinary bank version (:mod:`patchbank.bank`) whose manifest says ``input: points``; it is
built, evaluated, published and served by the same commands as an RGB + 3D bank.
"""
