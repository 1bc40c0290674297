"""Account tasks: thin wrappers over services, taking ids."""

from celery import shared_task

from . import services


@shared_task(name="accounts.send_password_reset")
def send_password_reset(user_id: int | None, origin: str) -> bool:
    return services.send_password_reset(user_id=user_id, origin=origin)
