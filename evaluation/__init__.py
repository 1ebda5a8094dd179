"""megadoc.evaluation: i.i.d., short-document and loss-by-position evaluation of a checkpoint (`evaluate`), from
per-token losses aggregated in `metrics`."""
