"""Reports, one direction: run artifacts -> analysis tables -> plots -> HTML and Markdown."""
