"""torch.library registrations of the geoops kernels: one module per family (``geoops._ops.<family>``).

Each family registers its kernels as custom ops ``geoops::<op>_fwd`` / ``geoops::<op>_bwd`` with
fake (meta) implementations, through the family-neutral helpers of ``geoops._library``.  Importing a
family's public module (``geoops.<family>``) imports its registrations.
"""
