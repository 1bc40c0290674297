from allauth.account.adapter import DefaultAccountAdapter


class AccountAdapter(DefaultAccountAdapter):
    """Mailboxes are created by domain admins, never by self sign-up."""

    def is_open_for_signup(self, request) -> bool:
        return False
