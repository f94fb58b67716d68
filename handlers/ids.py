"""Every action_id and callback_id Countersign puts in Slack, in one place."""

APPROVE = "draft.approve"
EDIT = "draft.edit"
REJECT = "draft.reject"
RETRY = "draft.retry"
CLAIM = "manual.claim"
DONE = "manual.done"
HOME_PAUSE = "home.pause"
HOME_RESUME = "home.resume"

EDIT_MODAL = "draft.edit_modal"
REJECT_MODAL = "draft.reject_modal"

EDIT_BODY_BLOCK, EDIT_BODY_INPUT = "body", "body_input"
EDIT_AMOUNT_BLOCK, EDIT_AMOUNT_INPUT = "amount", "amount_input"
REJECT_REASON_BLOCK, REJECT_REASON_INPUT = "reason", "reason_input"

COMMAND = "/agent"
EVENTS = ("app_home_opened",)
