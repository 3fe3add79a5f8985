"""The node's side of backups: shipping its store to the region's bucket (shipper) and
rebuilding a store from it (restore). The layout and the bucket are domicile.backup."""
