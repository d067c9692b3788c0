"""The batch entries every window model reads, declared once (the pipeline builds them; tasks, evaluation and
memory plans name them through this constant).

    signal       float32 [B, P, T]  normalised parcel series of one window
    parcel_mask  bool    [B, P]     parcels with signal: False for padding (mixed atlases) and for the parcels a
                                    scan misses (manifest ``missing_parcels``, stored as 0)
    coords       float32 [B, P, 3]  parcel centroids (MNI mm)
    tr           float32 [B]        repetition time in seconds
"""

WINDOW_KEYS = ("signal", "parcel_mask", "coords", "tr")
