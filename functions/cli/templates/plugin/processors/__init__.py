"""{{name}}: the classes the pipeline's steps run."""
