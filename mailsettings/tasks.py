"""Mail settings' tasks, taking ids: the send tasks sit beside the functions they wrap; the sweep is here."""

from celery import shared_task

from pushmail_site.jobs import overdue_ids

from .forwarding import forward_message_task
from .models import AutoSendState, Forward, VacationReply
from .vacation import send_vacation_reply_task


@shared_task(name="mailsettings.requeue_due")
def requeue_due(limit: int = 1000) -> int:
    """Queue again the vacation replies and forwards that are due (a lost broker message, a dead worker)."""
    replies = overdue_ids(VacationReply.objects.filter(state=AutoSendState.WAITING), limit=limit)
    forwards = overdue_ids(Forward.objects.filter(state=AutoSendState.WAITING), limit=limit)
    for pk in replies:
        send_vacation_reply_task.delay(pk)
    for pk in forwards:
        forward_message_task.delay(pk)
    return len(replies) + len(forwards)


__all__ = ["forward_message_task", "requeue_due", "send_vacation_reply_task"]
