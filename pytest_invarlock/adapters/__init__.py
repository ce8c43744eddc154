"""Reference adapters, registered under the ``invarlock.adapters`` entry-point group."""
