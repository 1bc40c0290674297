"""Mail settings' tasks, taking ids: the send tasks sit beside the functions they wrap; the sweep is here."""

from celery import shared_task

from pushmail_site.jobs import enqueue, overdue_ids

from .forwarding import forward_message_task
from .models import AutoSendState, Forward, VacationReply
from .vacation import send_vacation_reply_task


@shared_task(name="mailsettings.requeue_due")
def requeue_due(limit: int = 1000) -> int:
    """Queue again the vacation replies and forwards that are due (a lost broker message, a dead worker)."""
    waiting = AutoSendState.WAITING
    replies = overdue_ids(VacationReply.objects.filter(state=waiting), task=send_vacation_reply_task, limit=limit)
    forwards = overdue_ids(Forward.objects.filter(state=waiting), task=forward_message_task, limit=limit)
    for pk in replies:
        enqueue(send_vacation_reply_task, pk)
    for pk in forwards:
        enqueue(forward_message_task, pk)
    return len(replies) + len(forwards)


__all__ = ["forward_message_task", "requeue_due", "send_vacation_reply_task"]
