"""django-q2 entry points. Keep them thin: the flow lives in sealing.flow."""

from sealing import flow


def run_template_flow(template_id: int) -> None:
    flow.run(template_id)
