"""Datasets: the panel, embargoed windows and the LightningDataModule."""
