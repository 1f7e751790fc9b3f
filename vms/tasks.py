"""django-q2 entry point of the VM flow (kept thin: the flow is vms.flow). The sweeper that resumes
orphaned VM flows is the shared one, sealing.tasks.sweep."""

from vms import flow


def run_vm_flow(vm_id: int) -> None:
    flow.run(vm_id)
