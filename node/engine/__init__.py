"""Storage engines behind one Protocol (base.StorageEngine) and one contract suite."""
