"""One module per rule family; each holds pure `_nb` kernels used by the step kernel only."""
