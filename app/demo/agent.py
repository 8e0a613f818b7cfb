"""The built-in demo: a receptionist for a small business, offline and deterministic.

It books and cancels appointments, looks up orders, searches the customer list and tells
the opening hours, asks for what is missing, transfers to a person or hangs up on request.
Its tools are real ``@tool`` methods over the demo tables (see records.py), each
taking ``DEMO_TOOL_LATENCY`` seconds like a slow upstream; the LLM agent uses the same
tools. What a call has said so far (the pending request and its details) is kept in the
database under the call or conversation id, so any worker can take the next turn.

Side effects are keyed by ``turn.delivery_id``: a retried turn returns the booking it made
the first time instead of making another, and the calendar refuses a second booking of
the same slot.
"""

import dataclasses
import logging
import re
import time
from typing import Literal

from app.agent.base import TRANSFER, Agent, Reply
from app.agent.tools import ToolError, tool
from app.demo.records import DemoRecords

log = logging.getLogger(__name__)

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
Day = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
HOURS = ("We're open Monday to Friday from 9 AM to 5 PM, and Saturday from 10 AM to 1 PM. "
         "We're closed on Sundays.")
BUSINESS = "Bright Smile Studio"

NOT_NAMES = frozenset({"me", "my", "the", "a", "an", "it", "today", "tomorrow", "next", "this",
                       "that", "noon", "morning", "afternoon", "order", "i"})
_WORDS = re.compile(r"[a-z0-9']+")
_ORDER_NUMBER = re.compile(r"\b(?:ord(?:er)?[-\s#]*)?#?(\d{4,})\b", re.I)
_NAME = re.compile(
    r"\b(?i:my name is|my name's|name is|this is|it's for|under the name|under|for)\s+"
    r"([A-Z][a-zA-Z'-]+(?:\s+[A-Z][a-zA-Z'-]+)?)"
)
_TIME = re.compile(
    r"\b(\d{1,2})(?::(\d{2}))?\s*(a\.?m\.?|p\.?m\.?|o'?clock)?(?![\d:])", re.I
)
_NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "noon": 12}

INTENTS = {
    "goodbye": ("bye", "goodbye", "hang up", "that's all", "that is all", "nothing else",
                "no thanks", "no thank you"),
    "transfer": ("human", "person", "representative", "operator", "manager", "real agent",
                 "transfer", "speak to", "talk to", "put me through"),
    "cancel": ("cancel",),
    "book": ("book", "appointment", "schedule", "reserve", "come in", "make a booking"),
    "availability": ("available", "availability", "openings", "free", "slot", "slots",
                     "what times", "when can"),
    "order": ("order", "package", "delivery", "shipping", "shipped", "track", "parcel"),
    "hours": ("hours", "open", "close", "closing", "when are you"),
    "account": ("my account", "on file", "my details", "look me up", "who am i",
                "customer record"),
}
ACKNOWLEDGEMENTS = {
    "goodbye": "Of course.", "transfer": "Sure.", "hours": "Sure.",
    "book": "Let me check the calendar.", "availability": "Let me check the calendar.",
    "cancel": "Let me find your appointment.", "order": "Let me look that up.",
    "account": "Let me look you up.",
}


def detect_intent(text):
    """The first intent whose cue words appear in ``text`` (lower-cased), else None."""
    lowered = " " + " ".join(_WORDS.findall(text.lower())) + " "
    for intent, cues in INTENTS.items():
        if any(f" {cue} " in lowered for cue in cues):
            return intent
    return None


def parse_day(text):
    for word in _WORDS.findall(text.lower()):
        for day in DAYS:
            if word == day or word == day[:3] or (len(word) >= 4 and day.startswith(word)):
                return day
    return None


def parse_time(text):
    """"10", "10am", "2 pm", "14:00", "two o'clock" -> "HH:MM" (bare 1-6 mean afternoon)."""
    lowered = text.lower()
    for word, number in _NUMBER_WORDS.items():
        # Only where a time is meant: "at two", "two pm", "two o'clock", "noon".
        pattern = rf"\b{word}\b" if word == "noon" else (
            rf"(?<=\bat ){word}\b|\b{word}(?=\s*(?:a\.?m|p\.?m|o'?clock|thirty)\b)")
        lowered = re.sub(pattern, str(number), lowered)
    for m in _TIME.finditer(lowered):
        hour, minute, suffix = int(m.group(1)), int(m.group(2) or 0), (m.group(3) or "")
        meridiem = suffix[:1] if suffix[:1] in ("a", "p") else ""
        if hour > 23 or minute not in (0, 30) or (hour > 12 and (meridiem or not m.group(2))):
            continue
        if suffix.startswith("p") and hour < 12:
            hour += 12
        elif suffix.startswith("a") and hour == 12:
            hour = 0
        elif not meridiem and 1 <= hour <= 6:
            hour += 12
        return f"{hour:02d}:{minute:02d}"
    return None


def parse_order_number(text):
    m = _ORDER_NUMBER.search(text)
    return m.group(1) if m else None


def parse_name(text):
    for m in _NAME.finditer(text):
        name = m.group(1).strip()
        if name.split()[0].lower() not in NOT_NAMES and not parse_day(name.split()[0]):
            return name
    return None


def say_time(slot_time):
    hour, minute = (int(x) for x in slot_time.split(":"))
    if (hour, minute) == (12, 0):
        return "noon"
    suffix = "AM" if hour < 12 else "PM"
    hour = hour % 12 or 12
    return f"{hour}:{minute:02d} {suffix}" if minute else f"{hour} {suffix}"


def say_list(items):
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def normalize_phone(phone):
    """US-style numbers to E.164 (the demo data's form); anything else as given."""
    if not phone:
        return None
    digits = re.sub(r"\D", "", phone)
    if len(digits) == 10:
        return "+1" + digits
    if len(digits) == 11 and digits.startswith("1"):
        return "+" + digits
    return phone.strip()


class Receptionist(Agent):
    """The demo agent: see the module docstring. ``store`` is the app's store; the demo tables
    are added to its database if they are not there yet."""

    acknowledgement = "One moment."

    def __init__(self, store, tool_latency):
        self.store = store
        self.records = DemoRecords(store)
        self.tool_latency = tool_latency

    def _upstream(self, name, turn=None):
        """Stand-in for a slow upstream system."""
        time.sleep(self.tool_latency)
        # DEBUG: a line per tool would cost every text and turn; the job's line tells the rest.
        log.debug("demo tool %s ran for %s", name, getattr(turn, "delivery_id", None))

    # -- tools (also offered to the LLM agent) ----------------------------------------------

    @tool(timeout=8)
    def check_availability(self, day: Day | None = None, turn=None) -> dict:
        """List free appointment times, for one day or the next openings of the week.

        Args:
            day: Day of the week in lower case; omit for the next free slots on any day.
        """
        self._upstream("check_availability", turn)
        day = parse_day(day) if day else None
        slots = self.records.open_slots(day)
        if day:
            return {"day": day, "open_times": [s["slot_time"] for s in slots]}
        return {"next_openings": [{"day": s["day"], "time": s["slot_time"]} for s in slots[:4]]}

    @tool(timeout=8)
    def book_appointment(self, day: Day, time: str, name: str, turn=None) -> dict:
        """Book an appointment slot for the caller.

        Args:
            day: Day of the week in lower case.
            time: Start time as HH:MM, 24-hour clock (e.g. 14:00).
            name: Full name to book under.
        """
        day_ = parse_day(day or "")
        slot_time = parse_time(time or "") if not re.fullmatch(r"\d\d:\d\d", time or "") else time
        if not day_ or not slot_time:
            raise ToolError("give the day of the week and a time such as 10:00")
        self._upstream("book_appointment", turn)
        outcome, appointment = self.records.book(
            day_, slot_time, name.strip(), normalize_phone(turn.caller) if turn else None,
            turn.delivery_id if turn else None,
        )
        result = {"outcome": outcome, "day": day_, "time": slot_time}
        if appointment:
            result["appointment"] = appointment
        if outcome in ("taken", "no_such_slot"):
            result["other_times_that_day"] = [
                s["slot_time"] for s in self.records.open_slots(day_)
            ]
        return result

    @tool(timeout=8)
    def cancel_appointment(self, day: Day | None = None, turn=None) -> dict:
        """Cancel the caller's appointment (found by their phone number).

        Args:
            day: Which day's appointment, when the caller has more than one.
        """
        self._upstream("cancel_appointment", turn)
        delivery = turn.delivery_id if turn else None
        if delivery and (done := self.records.cancelled_by(delivery)):
            return {"outcome": "cancelled", "appointment": done}
        phone = normalize_phone(turn.caller) if turn else None
        booked = self.records.appointments(phone=phone) if phone else []
        day = parse_day(day) if day else None
        if day:
            booked = [a for a in booked if a["day"] == day]
        if not booked:
            return {"outcome": "not_found"}
        if len(booked) > 1:
            return {"outcome": "which_one", "appointments": booked}
        outcome, appointment = self.records.cancel(booked[0]["id"], delivery)
        outcome = "cancelled" if outcome == "repeated" else outcome
        return {"outcome": outcome, "appointment": appointment}

    @tool(timeout=8)
    def lookup_order(self, order_id: str | None = None, turn=None) -> dict:
        """Find an order's status by its number, or the caller's orders by their phone.

        Args:
            order_id: The order number, e.g. "4521"; omit to use the caller's phone number.
        """
        self._upstream("lookup_order", turn)
        if order_id:
            number = parse_order_number(order_id) or order_id.strip()
            order = self.records.order(number)
            return {"orders": [order] if order else [], "searched": number}
        phone = normalize_phone(turn.caller) if turn else None
        return {"orders": self.records.orders_for_phone(phone) if phone else [],
                "searched": "caller's phone number"}

    @tool(timeout=8)
    def search_customers(self, name: str | None = None, phone: str | None = None,
                         turn=None) -> dict:
        """Search the customer list by (part of a) name and/or phone number.

        Args:
            name: Part of the customer's name, any case.
            phone: Phone number, e.g. +15559876543.
        """
        if not name and not phone:
            raise ToolError("give a name or a phone number")
        self._upstream("search_customers", turn)
        return {"customers": self.records.customers(name=name, phone=normalize_phone(phone))}

    @tool
    def opening_hours(self) -> str:
        """The business's opening hours."""
        return HOURS

    # -- conversation -----------------------------------------------------------------------

    def acknowledge(self, turn):
        return ACKNOWLEDGEMENTS.get(detect_intent(turn.text), self.acknowledgement)

    def respond(self, turn):
        key = turn.session_id
        state = self.store.session_state(key) if key else {}
        done = state.get("last_turn") or {}
        if turn.delivery_id and done.get("delivery_id") == turn.delivery_id:
            # The same delivery again (a retried text job): same answer, no new effects.
            log.info("demo turn %s seen before, repeating its answer", turn.delivery_id)
            yield from done["interim"]
            yield Reply(**done["reply"])
            return
        interim = []
        reply = self.answer(turn, state)
        while not isinstance(reply, Reply):  # a generator: it speaks, then returns the Reply
            try:
                chunk = next(reply)
            except StopIteration as stop:
                reply = stop.value
                break
            interim.append(chunk)
            yield chunk
        state["turns"] = state.get("turns", 0) + 1
        state["last_turn"] = {"delivery_id": turn.delivery_id, "interim": interim,
                              "reply": dataclasses.asdict(reply)}
        if key:
            try:
                self.store.save_session_state(key, state)
            except Exception:
                # The answer matters more than the context: say it, lose the memory.
                log.exception("demo turn %s: could not save the call's context",
                              turn.delivery_id)
        yield reply

    def answer(self, turn, state):
        """The final Reply, or a generator that yields interim sentences and returns it;
        updates ``state``. (Not a generator itself: one level fewer on a held call's stack.)"""
        text = turn.text.strip()
        intent = detect_intent(text)
        voice = turn.channel == "voice"
        if intent == "goodbye" or (intent is None and _is_no(text) and state.get("offered")):
            state.clear()
            if voice:
                return Reply("Thanks for calling. Goodbye!", hangup=True)
            return Reply("Thanks for getting in touch. Bye for now!")
        state.pop("offered", None)
        if state.pop("offered_transfer", False) and intent is None:
            if _is_yes(text):
                intent = "transfer"
            elif _is_no(text):
                return self._offer(state, "Okay.")
        if intent == "cancel" and re.search(r"\border\b", text.lower()):
            state["offered_transfer"] = True
            state.pop("pending", None)
            return Reply("I can't cancel an order myself, but someone from our team can. "
                         "Would you like me to put you through?")
        if intent == "transfer":
            state.pop("pending", None)
            if voice:
                return Reply("Let me connect you with someone from our team.", action=TRANSFER)
            return Reply("I've asked someone from our team to get back to you shortly.")
        if intent == "hours":
            return self._offer(state, HOURS)
        if intent is None and state.get("pending"):
            intent = state["pending"]
        if intent in ("book", "availability"):
            return self._book(turn, state, text, intent)
        if intent == "cancel":
            return self._cancel(turn, state, text)
        if intent == "order":
            return self._order(turn, state, text)
        if intent == "account":
            return self._account(turn, state)
        if not text:
            return Reply("Sorry, I didn't catch that. Could you say it again?")
        return Reply(f"This is {BUSINESS}. I can book or cancel an appointment, check on an "
                     "order, or tell you our opening hours. What would you like to do?")

    def _offer(self, state, text):
        state["offered"] = True
        return Reply(f"{text} Is there anything else I can help with?")

    def _book(self, turn, state, text, intent):
        details = state.setdefault("booking", {})
        details["day"] = parse_day(text) or details.get("day")
        details["time"] = parse_time(text) or details.get("time")
        name = parse_name(text) or (text if _looks_like_name(text, state) else None)
        details["name"] = name or details.get("name") or state.get("name")
        if intent == "availability" and not details.get("time"):
            found = self.check_availability(day=details["day"], turn=turn)
            if "next_openings" in found:
                openings = [f"{o['day'].title()} at {say_time(o['time'])}"
                            for o in found["next_openings"]]
                state["pending"] = "book"
                return Reply(f"The next openings are {say_list(openings)}. "
                             "Would you like to book one of them?")
            return self._times_reply(state, details["day"], found["open_times"])
        if details["day"] == "sunday":
            details["day"] = None
            state["pending"] = "book"
            return Reply("We're closed on Sundays. Which other day works for you?")
        if not details["day"]:
            state["pending"] = "book"
            return Reply("Sure. Which day would you like? We take appointments Monday to "
                         "Saturday.")
        if not details["time"]:
            found = self.check_availability(day=details["day"], turn=turn)
            return self._times_reply(state, details["day"], found["open_times"])
        if not details["name"]:
            yield "Let me pull up your details."
            customer = self._caller_record(turn)
            if customer:
                details["name"] = state["name"] = customer["name"]
            else:
                state["pending"] = "book"
                state["asked_name"] = True
                return Reply("And what name should I put the appointment under?")
        result = self.book_appointment(day=details["day"], time=details["time"],
                                       name=details["name"], turn=turn)
        when = f"{details['day'].title()} at {say_time(details['time'])}"
        if result["outcome"] in ("booked", "repeated"):
            booked = result["appointment"]
            when = f"{booked['day'].title()} at {say_time(booked['slot_time'])}"
            state.pop("booking", None)
            state.pop("pending", None)
            state.pop("asked_name", None)
            return self._offer(state, f"You're booked for {when}, {booked['name']}.")
        details["time"] = None
        others = [say_time(t) for t in result.get("other_times_that_day", [])]
        state["pending"] = "book"
        lead = ("Sorry, that time is already taken." if result["outcome"] == "taken"
                else f"Sorry, we don't take appointments {when}.")
        if others:
            return Reply(f"{lead} On {details['day'].title()} I still have "
                         f"{say_list(others)}. Would one of those work?")
        details["day"] = None
        return Reply(f"{lead} That day is fully booked. Would another day work?")

    def _times_reply(self, state, day, times):
        state["pending"] = "book"
        state.setdefault("booking", {})["day"] = day
        if not times:
            state["booking"]["day"] = None
            return Reply(f"Sorry, {day.title()} is fully booked. Would another day work?")
        return Reply(f"On {day.title()} I have {say_list(say_time(t) for t in times)}. "
                     "Which time would you like?")

    def _cancel(self, turn, state, text):
        state["pending"] = "cancel"
        result = self.cancel_appointment(day=parse_day(text), turn=turn)
        if result["outcome"] == "which_one":
            days = [f"{a['day'].title()} at {say_time(a['slot_time'])}"
                    for a in result["appointments"]]
            return Reply(f"I see appointments on {say_list(days)}. Which one should I cancel?")
        state.pop("pending", None)
        if result["outcome"] == "not_found":
            return self._offer(state, "I couldn't find an appointment under this number.")
        a = result["appointment"]
        return self._offer(state, f"Your appointment on {a['day'].title()} at "
                                  f"{say_time(a['slot_time'])} is cancelled.")

    def _order(self, turn, state, text):
        number = parse_order_number(text)
        result = self.lookup_order(order_id=number, turn=turn)
        orders = result["orders"]
        if not orders:
            if number or state.get("pending") == "order":
                state.pop("pending", None)
                state["offered_transfer"] = True
                return Reply("I couldn't find that order. Could you check the number, or "
                             "would you like me to connect you with our team?")
            state["pending"] = "order"
            return Reply("I couldn't find an order under this number. What's your order "
                         "number?")
        state.pop("pending", None)
        first = orders[0]
        yield f"I found order {first['id']}, {first['item']}."
        text = f"{first['detail']}."
        if len(orders) > 1:
            others = say_list(f"order {o['id']}" for o in orders[1:3])
            text += f" You also have {others}; just ask if you'd like an update on it."
        return self._offer(state, text)

    def _account(self, turn, state):
        customer = self._caller_record(turn)
        if not customer:
            return self._offer(state, "I don't have a customer record for this number.")
        state["name"] = customer["name"]
        return self._offer(state, f"I have you as {customer['name']}, email "
                                  f"{customer['email']}.")

    def _caller_record(self, turn):
        if not turn.caller:
            return None
        customers = self.search_customers(phone=turn.caller, turn=turn)["customers"]
        return customers[0] if customers else None


def _is_yes(text):
    words = _WORDS.findall(text.lower())
    return bool(words) and words[0] in ("yes", "yeah", "yep", "sure", "ok", "okay",
                                        "please") and len(words) <= 5


def _is_no(text):
    words = _WORDS.findall(text.lower())
    return bool(words) and words[0] in ("no", "nope", "nah") and len(words) <= 4


def _looks_like_name(text, state):
    """A short capitalised answer right after we asked for a name."""
    words = text.strip(" .!").split()
    return bool(state.get("asked_name")) and 1 <= len(words) <= 3 and all(
        w[:1].isupper() for w in words)

