"""Training: state, jit steps on a device mesh, and the loop."""
